/*  llmq_broker.c - the broker actor: queues, credit dispatch, heartbeats.

    Design. Everything happens on the actor's thread in one poll loop
    (s_run): the pipe, the client ROUTER, the worker ROUTER, the metrics
    listener, and timers (heartbeats, worker liveness, request expiry). The
    state is plain data, so there are no locks.

    - A request lives in one s_request_t from receipt to answer. While it
      waits it sits in its lane (one per model and optional pool), an
      intrusive heap ordered by priority then arrival; a requeued request
      gets a sequence number below every other, so it goes first in its
      priority class. Every request with a deadline (or waiting for a
      worker to join) also sits in one expiry heap, so expiry costs
      O(log n) per request and never scans a queue.
    - Workers grant credit; a request goes only to a worker with credit,
      the one with the most (ties: least recently used). Dispatch is
      O(workers) per request. Each dispatch gets a fresh broker id
      ("r<hex>"), so a late answer from a worker that was declared dead can
      never be mistaken for the answer of the next attempt.
    - The request payload is never decoded: the frame received from the
      client is shared with the outgoing zmq message (refcounted, no copy),
      and kept for a requeue until the request is answered.
    - Clients are interned by routing id only while they have requests
      pending (for dedupe and cancel); workers by routing id from hello
      until they leave or die.
    - Delivery under churn (PROTOCOL.md 3.3): a request is keyed by its
      client ("client:id", rkey). Results passed on are acked to their
      worker in batches; `held` reports after a worker's hello, and
      resends parked for --recovery-ms after start, let a resend be
      attached to the worker that holds it. Broker ids start at a random
      counter so no two runs share one. A dead worker's requests are
      requeued until their deadline; a death count (s_death_weight) stops
      a poison request; a stream the client saw chunks of is never sent
      again.
*/
#include "llmq_broker.h"
#include "llmq_cache.h"
#include "llmq_auth.h"
#include "llmq_curve.h"
#include "llmq_log.h"
#include "llmq_metrics.h"
#include "llmq_models.h"
#include "llmq_payload.h"
#include "llmq_queue.h"
#include "llmq_route.h"
#include "llmq_value.h"
#include "llmq_version.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define s_VERSION LLMQ_VERSION_STRING
#define s_MAX_BATCH 256         //  Messages read per socket per turn
#define s_TICK_MS 100           //  Housekeeping period
#define s_MAX_METRIC_MODELS 200 //  Distinct model labels, then "_other"
#define s_MAX_ATTEMPTS 10       //  Upper bound on a client's max_attempts
#define s_NO_EXPIRY INT64_MAX
#define s_END LLMQ_LOG_END       //  Ends s_log's key/value list
#define s_MAX_STATUS_QUEUES 1000 //  Lanes listed in a status reply
#define s_COMPACT_ABOVE 4096 //  Queue length from which payloads are compacted
#define s_MAX_DEATHS 16      //  Death count that abandons a request (3.3)
#define s_STRONG_DEATH 3     //  What a death without a sign of life adds
#define s_SURVIVED_MS                                                          \
    250                     //  A worker seen this long after a dispatch
                            //  survived that request (s_death_weight)
#define s_ACKS_PER_MSG 2048 //  Broker ids per `ack` (the `ids` limit)
#define s_ACK_DELAY_MS 2000 //  Ack a result this long after passing it on
#define s_ATTACH_TTL 600000 //  Forget a `held` key nobody resent after this
#define s_REQUEST_SIZE 512  //  Bytes of a pooled request (with its keys)
#define s_POOL_MAX 4096     //  Freed requests kept for reuse
#if defined(__SANITIZE_ADDRESS__)
#define s_POOLED false //  No reuse: AddressSanitizer sees every use after free
#else
#define s_POOLED true
#endif

typedef struct _s_client_t s_client_t;
typedef struct _s_worker_t s_worker_t;
typedef struct _s_lane_t s_lane_t;
typedef struct _s_group_t s_group_t;
typedef struct _s_request_t s_request_t;
typedef struct _s_tenant_t s_tenant_t;
typedef struct _s_fair_t s_fair_t;

//  An open-addressing hash table (linear probing, backward-shift
//  deletion) of borrowed items that know their own hash: no allocation
//  per entry and no string hashing of CZMQ's. The caller matches keys.
typedef struct {
    uint64_t hash; //  The item's hash
    void *item;    //  NULL: free
} s_slot_t;

typedef struct {
    s_slot_t *slots; //  A power of two of them, or NULL
    size_t mask;     //  Slots - 1
    size_t count;    //  Items
} s_table_t;

//  What the broker knows of a client (routing id) beyond its pending
//  requests (PROTOCOL.md 3.5): the replies handed to ZeroMQ and not yet
//  written, and its last heartbeat. Kept in the broker's outboxes table
//  while anything is unwritten or the heartbeat is recent, whether or not
//  the client has requests pending (its s_client_t goes with its last
//  one); shared with its messages in flight, which libzmq releases from
//  its I/O thread: atomics.
//  Its records of messages in flight (s_sent_t) are reused, not freed:
//  libzmq's I/O thread pushes a released one on `returned` (a lock-free
//  stack), and the broker thread takes the whole stack at once (no ABA:
//  it never pops single records) into `spare`, its own list.
typedef struct s_sent_s s_sent_t;
typedef struct {
    atomic_int refs;      //  The table, its client entry, messages in flight
    atomic_size_t bytes;  //  Bytes in flight
    atomic_int msgs;      //  Messages in flight
    bool slow;            //  In a client_slow episode (broker thread only)
    int64_t heartbeat_at; //  Its last heartbeat (monotonic ms), 0 = none
    _Atomic(s_sent_t *) returned; //  Records libzmq is done with
    s_sent_t *spare;              //  Records to reuse (broker thread only)
} s_outbox_t;

//  A result passed on to its client, to be acked to its worker.
typedef struct {
    uint64_t bid; //  Broker id of the dispatch
    int64_t at;   //  When it was passed on (monotonic ms)
} s_ack_t;

static const char *s_ops[] = {"chat", "completion", "embedding"};

//  A request keeps its payload (for a requeue) as the zmq_msg_t it was
//  received in: each dispatch sends a zmq_msg_copy of it, which libzmq
//  refcounts (no copy of the bytes, no allocation). A request that has to
//  wait in a long queue gets a compact copy instead, because a received
//  message pins libzmq's whole shared receive buffer (about 18 KB for
//  every 7 KB of messages), which would more than double the memory of a
//  long queue. The copy is shared with the zmq messages that carry it to
//  workers; libzmq releases its reference from its I/O thread, hence the
//  atomic count.
typedef struct {
    atomic_int refs; //  Holders: the request + messages in flight
    size_t size;     //  Size of data
    uint8_t data[];  //  Compact copy
} s_shared_t;

struct _s_request_t {
    llmq_queue_node_t qnode; //  Slot in its lane while waiting
    llmq_queue_node_t dnode; //  Slot in the expiry heap, or:
    s_request_t *eprev;      //  Its place in the expiry list
    s_request_t *enext;
    int64_t ekey;       //  Its key there
    bool in_elist;      //  It is in the expiry list
    s_client_t *client; //  Who asked; NULL for a module's request
    char *id;           //  The client's id (a module's tag), stored
                        //  right after the struct (s_request_new),
                        //  the tail of rkey if it has one
    s_lane_t *lane;     //  Model/pool lane it belongs to
    s_worker_t *worker; //  Worker holding it, NULL unless dispatched
    s_request_t *wprev; //  Worker's in-flight list
    s_request_t *wnext;
    zmq_msg_t pmsg;     //  Payload as received (has_pmsg), or:
    s_shared_t *shared; //  its compact copy (see s_shared_t)
    bool has_pmsg;
    uint8_t *meta; //  meta as encoded msgpack, echoed back
    size_t meta_size;
    char *trace;               //  W3C traceparent, passed to the worker
    char *tenant;              //  Declared tenant (advisory), to the worker
    llmq_broker_result_fn *fn; //  Module callback instead of a client
    void *fn_arg;
    uint64_t bid;         //  Broker id of the current dispatch, 0 if none:
                          //  dispatch counter << 32 | in-flight slot
    int64_t priority;     //  Higher first
    int64_t received_at;  //  Monotonic ms
    int64_t sent_at;      //  Monotonic ms of the current dispatch
    int64_t deadline;     //  Monotonic ms, s_NO_EXPIRY if none
    int64_t expire_at;    //  When to look at it again (s_expiry_set): its
                          //  key in the expiry heap, or later
    bool from_module;     //  Came from the module's next_item
    uint8_t op;           //  Index in s_ops
    uint8_t attempt;      //  Dispatch attempt, from 1
    uint8_t max_attempts; //  Give up after this many
    bool stream;          //  Client wants chunks
    bool resend;          //  The client sent it before (3.3)
    uint8_t deaths;       //  Death count (PROTOCOL.md 3.3)
    uint8_t route_step;   //  Its step in its route's chain (3.6)
    uint32_t chunks;      //  Chunks the client has (forwarded or resumed)
    char *rkey;           //  Request key "client:id", NULL for a module's;
                          //  stored after the struct (s_request_new)
    bool pooled;          //  Of s_REQUEST_SIZE bytes: goes back to the pool
    void *park;           //  Handle in parked while waiting for `held`
    s_tenant_t *owner;    //  Its tenant (PROTOCOL.md 3.4), NULL: none
    s_fair_t *fair;       //  Its fair-share stamp while waiting, or NULL
    size_t bytes;         //  Payload bytes, as received
    llmq_cache_flight_t *flight; //  Its single flight (3.7), or NULL
    void *fwait;                 //  Handle there while it waits, or NULL
    char *routed;       //  A route chose its lane (PROTOCOL.md 3.6): the
                        //  model and, after its NUL, the pool it asked
                        //  for; NULL if not routed
    uint64_t hash;      //  Its key (client, id) in the pending table
    s_request_t *cprev; //  Its client's list of pending requests
    s_request_t *cnext;
};

struct _s_client_t {
    char *key;               //  Routing id in hex (and tenant, s_key_tenant)
    zframe_t *rid;           //  Routing id
    const uint8_t *rid_data; //  Its bytes (in rid)
    size_t rid_size;
    uint64_t hash;         //  Its key in the client index (s_client_hash)
    uint64_t tenant;       //  FNV-1a of its tenant, 0 for none
    bool tenanted;         //  It has a tenant (its key has the suffix)
    s_request_t *requests; //  Its pending requests (in the pending table)
    size_t npending;       //  How many
    int64_t last_seen;     //  Monotonic ms of its last message (3.5)
    bool heartbeat;        //  Sent a heartbeat: the silence rule applies
    s_outbox_t *box;       //  Its outbox (a reference), from its first reply
};

struct _s_lane_t {
    char *key;                  //  model "\x1f" pool
    char *model;                //  Model name
    char *pool;                 //  Pool name, NULL for any pool
    llmq_queue_t *queue;        //  Waiting requests
    zlistx_t *workers;          //  Live workers that serve it (borrowed)
    s_worker_t **warr;          //  The same in an array, for s_best_worker,
    size_t nwarr;               //  rebuilt when not warr_fresh (every
    bool warr_fresh;            //  change of workers clears it)
    size_t refs;                //  Requests that point here (queued or not)
    int64_t no_worker_since;    //  When it last lost (or never had) a worker
    int64_t idle_since;         //  When refs dropped to 0, for collection
    llmq_metric_series_t *m_ok; //  requests_total{model, outcome="ok"}
    llmq_metric_series_t *m_latency; //  latency histogram {model}
    const char *m_model;   //  Its model's metric label (s_metric_model), once
    zhashx_t *fair;        //  Fair-share stamps, s_fair_t (NULL until needed)
    uint64_t models_gen;   //  self->models_gen when unknown_model was found
    bool unknown_model;    //  Not in self->models: no fit check (3.8)
    s_fair_t *fair_last;   //  The (priority, tenant) entry last stamped
    int64_t fair_priority; //  from, while it lives (a tenant's requests
    const char *fair_name; //  come in runs); its tenant, in its key
};

struct _s_group_t {
    char *name;        //  limit_group
    zlistx_t *members; //  Workers (borrowed)
};

struct _s_worker_t {
    char *key;               //  Routing id in hex
    zframe_t *rid;           //  Routing id
    const uint8_t *rid_data; //  Its bytes (in rid)
    size_t rid_size;
    uint64_t hash; //  Its slot in the worker index (of rid's bytes)
    char *name;    //  From hello
    char *pool;
    char *provider;
    char *version;
    char **models; //  Served models
    size_t nmodels;
    int64_t capacity;  //  Max in flight, from hello
    int64_t credit;    //  Requests we may still send
    int64_t in_flight; //  Requests it holds for us
    int64_t rpm;       //  The key's whole limit, from hello
    int64_t tpm;
    int64_t share_rpm; //  Its share, as last sent in `limits`
    int64_t share_tpm;
    bool batch_api;
    bool healthy;          //  From its heartbeats
    bool leaving;          //  Said bye: no new work
    bool silent;           //  Silent for dead_ms / 2: probably dead, so no
                           //  new work until it speaks again
    int64_t last_seen;     //  Monotonic ms of its last message
    uint64_t last_used;    //  Dispatch clock, for LRU ties
    uint64_t answered;     //  Results it returned
    s_request_t *inflight; //  Head of its in-flight list
    zlistx_t *lanes;       //  Lanes it serves (borrowed)
    s_group_t *group;      //  Its limit group, or NULL
    s_ack_t *acks;         //  Results passed on, not yet acked
    size_t nacks;
    size_t acks_cap;
    bool bad_usage_logged; //  Said once that its usage is nonsense
};

typedef struct {
    uint64_t received, dispatched, answered_ok, answered_error, requeued,
        dropped, expired, overloaded, not_found, cancelled, duplicates,
        bad_messages, worker_deaths;
    uint64_t bad_usage;   //  Results whose usage was nonsense (made 0)
    uint64_t client_gone; //  Requests dropped because their client left
    uint64_t fallbacks;   //  Requests moved along a route's chain (3.6)
} s_counters_t;

struct _llmq_broker_core_t {
    zsock_t *pipe;               //  Actor pipe
    zsock_t *frontend;           //  Client ROUTER
    zsock_t *backend;            //  Worker ROUTER
    llmq_broker_config_t config; //  Copy of the caller's config
    char *name;                  //  Broker name (owned copy)
    char *frontend_ep;           //  Bound endpoints
    char *backend_ep;
    char *error;             //  Startup failure, NULL if fine
    llmq_metrics_t *metrics; //  Registry and scrape listener
    llmq_log_t *log;         //  Event log (text or JSON, per config)
    llmq_auth_t *auth;       //  CURVE gatekeeper, NULL without keys
    zcert_t *cert;           //  The broker's CURVE keypair, or NULL
    zhashx_t *clients;       //  key -> s_client_t
    zhashx_t *outboxes;      //  client key -> s_outbox_t, lazily (3.5)
    zhashx_t *workers;       //  key -> s_worker_t
    zhashx_t *lanes;         //  key -> s_lane_t
    zhashx_t *groups;        //  name -> s_group_t
    s_table_t client_index;  //  Clients by routing id and tenant (borrowed)
    s_table_t worker_index;  //  Workers by routing id (borrowed)
    s_table_t pending;       //  Pending client requests by (client, id)
    s_request_t *pool;       //  Freed requests for reuse (linked by cnext)
    size_t npool;            //  How many
    uint64_t seed;           //  Of both tables' hashes
    s_request_t **slots;     //  In-flight requests by slot (low half of bid)
    uint32_t *free_slots;    //  Stack of free slot numbers
    size_t nslots;           //  Slots allocated
    size_t nfree;            //  Entries in free_slots
    zhashx_t *metric_models; //  Model names used as labels
    llmq_models_t *models;   //  Known models: the fit check (3.8)
    uint64_t models_gen;     //  Counts what models learned (lanes cache it)
    llmq_queue_t *expiry;    //  Requests with an expiry time, or in:
    s_request_t *elist_head; //  The expiry list: those whose key came in
    s_request_t *elist_tail; //  order (the default deadline), O(1) each
    size_t queued;           //  Requests waiting in all lanes
    size_t inflight_count;   //  Requests held by workers
    uint64_t next_bid;       //  Broker id counter
    int64_t next_seq;        //  Arrival counter
    int64_t front_seq;       //  Counts down, for requeues
    uint64_t use_clock;      //  Dispatch counter
    int64_t started_at;      //  Monotonic ms
    int64_t next_heartbeat;  //  Monotonic ms
    int64_t next_tick;
    int64_t next_trim; //  Monotonic ms of the next malloc_trim
    bool overloaded;   //  In an overload episode (for logs)
    bool draining;     //  DRAIN received
    int64_t drain_deadline;
    bool drained;    //  DRAINED sent
    bool terminated; //  $TERM received
    s_counters_t counters;
    void *module_state;     //  Plug-in state
    uint64_t job_rr;        //  Round robin of batch job tasks
    zhashx_t *attach;       //  rkey -> s_attach_t: `held` keys not yet resent
    zlistx_t *parked;       //  Resends waiting for `held` (borrowed)
    int64_t recovery_end;   //  Until then resends are parked (3.3)
    zhashx_t *tenants;      //  name -> s_tenant_t, tenants holding requests
    size_t queued_bytes;    //  Payload bytes waiting in all lanes
    size_t tenants_waiting; //  Tenants with requests waiting
    zhashx_t *spend;        //  tenant -> s_spend_t, today (UTC) only
    int64_t spend_day;      //  Days since the epoch that spend counts
    llmq_cache_t *cache;    //  Response cache (3.7), NULL: off
    llmq_route_t *route;    //  Routes (PROTOCOL.md 3.6), NULL: none
    llmq_metric_series_t *m_received; //  llmq_broker_received_total
    s_lane_t *last_lane;     //  The lane s_lane_require last gave (a cache)
    s_tenant_t *last_tenant; //  The tenant s_tenant_find last gave (a cache)
};

//  A request key a worker reported in `held` before its client resent it.
typedef struct {
    int64_t at;     //  When reported
    char worker[1]; //  Worker key (routing id in hex), stored inline
} s_attach_t;

typedef llmq_broker_core_t s_broker_t;

static void s_dispatch_lane(s_broker_t *self, s_lane_t *lane);
static void s_request_destroy(s_broker_t *self, s_request_t **r_p);
static void s_bid_text(uint64_t bid, char out[24]);
static void s_client_send(s_broker_t *self, s_client_t *client,
                          llmq_msg_t **msg_p);
static void s_client_heartbeat_restore(s_broker_t *self, s_client_t *client);
static void s_cache_result(s_broker_t *self, s_request_t *r, llmq_msg_t *res);
static void s_cache_release(s_broker_t *self, s_request_t *r);
static void s_cache_promote(s_broker_t *self);
static bool s_cache_admit(s_broker_t *self, s_request_t *r, llmq_msg_t *msg);
static s_worker_t *s_best_worker(s_lane_t *lane);
static size_t s_pending_remove(s_broker_t *self, s_request_t *r);
static void s_request_free(s_broker_t *self, s_request_t *r);

//  --------------------------------------------------------------------------
//  Logging: one line per event through llmq_log (text or JSON, typed
//  values: LLMQ_LOG_STR, LLMQ_LOG_INT ... then s_END). level is "info",
//  "warning" or "error".

static void s_log(s_broker_t *self, const char *level, const char *event, ...)
{
    if (self->config.quiet)
        return;
    llmq_log_level_t at = LLMQ_LOG_INFO;
    llmq_log_level_parse(level, &at);
    va_list args;
    va_start(args, event);
    llmq_log_v(self->log, at, event, args);
    va_end(args);
}

//  Routing ids as hash keys: hex, since they are binary. From the bytes of
//  the message's routing id (a frame of them is made only when a reply
//  needs one).
static void s_msg_key(llmq_msg_t *msg, char *key, size_t size)
{
    static const char hex[] = "0123456789abcdef";
    size_t n = 0, pos = 0;
    const uint8_t *data = llmq_msg_routing_id_data(msg, &n);
    for (size_t i = 0; i < n && pos + 2 < size; i++) {
        key[pos++] = hex[data[i] >> 4];
        key[pos++] = hex[data[i] & 15];
    }
    key[pos] = 0;
}

static char *s_strdup_or_null(const char *text)
{
    return text ? strdup(text) : NULL;
}

//  --------------------------------------------------------------------------
//  Tables (s_table_t): the hot lookups, by a hash of raw bytes.

//  A 64-bit hash of bytes, eight at a time, keyed by a per-broker seed.
static uint64_t s_hash_bytes(const void *data, size_t size, uint64_t seed)
{
    const uint8_t *p = (const uint8_t *)data, *end = p + size;
    uint64_t h = seed ^ (size * 0x9e3779b97f4a7c15ULL), v = 0;
    if (size >= 8) {
        for (; end - p > 8; p += 8) {
            memcpy(&v, p, 8);
            h = (h ^ v) * 0xff51afd7ed558ccdULL;
            h ^= h >> 32;
        }
        memcpy(&v, end - 8, 8); //  The last 8, overlapping
    } else if (size >= 4) {     //  Two 4-byte reads, overlapping
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, end - 4, 4);
        v = (uint64_t)hi << 32 | lo;
    } else if (size) //  First, middle and last byte
        v = (uint64_t)p[0] << 16 | (uint64_t)p[size / 2] << 8 | end[-1];
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 29);
}

//  Rebuild the table with size slots (a power of two). -1 if out of memory.
static int s_table_resize(s_table_t *t, size_t size)
{
    s_slot_t *slots = (s_slot_t *)calloc(size, sizeof(s_slot_t));
    if (!slots)
        return -1;
    for (size_t i = 0; t->slots && i <= t->mask; i++) {
        if (!t->slots[i].item)
            continue;
        size_t j = t->slots[i].hash & (size - 1);
        while (slots[j].item)
            j = (j + 1) & (size - 1);
        slots[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = slots;
    t->mask = size - 1;
    return 0;
}

static int s_table_insert(s_table_t *t, uint64_t hash, void *item)
{
    if ((t->count + 1) * 2 > (t->slots ? t->mask + 1 : 0) &&
        s_table_resize(t, t->slots ? (t->mask + 1) * 2 : 64))
        return -1;
    size_t i = hash & t->mask;
    while (t->slots[i].item)
        i = (i + 1) & t->mask;
    t->slots[i] = (s_slot_t){hash, item};
    t->count++;
    return 0;
}

//  The slots holding hash, in turn: start with *i = hash & mask, then
//  s_table_next until it returns NULL.
static inline void *s_table_next(const s_table_t *t, uint64_t hash, size_t *i)
{
    if (!t->slots)
        return NULL;
    for (; t->slots[*i].item; *i = (*i + 1) & t->mask)
        if (t->slots[*i].hash == hash) {
            void *item = t->slots[*i].item;
            *i = (*i + 1) & t->mask;
            return item;
        }
    return NULL;
}

//  Take an item out (found by its hash and address); shrinks a sparse table.
static void s_table_remove(s_table_t *t, uint64_t hash, void *item)
{
    if (!t->slots)
        return;
    size_t i = hash & t->mask;
    while (t->slots[i].item && t->slots[i].item != item)
        i = (i + 1) & t->mask;
    if (!t->slots[i].item)
        return;
    //  Backward shift: pull later items of the run into the hole unless
    //  their home slot lies cyclically in (hole, their slot].
    for (size_t j = (i + 1) & t->mask; t->slots[j].item;
         j = (j + 1) & t->mask) {
        size_t home = t->slots[j].hash & t->mask;
        if (((j - home) & t->mask) >= ((j - i) & t->mask)) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].item = NULL;
    t->count--;
    if (t->mask + 1 > 64 && t->count * 8 < t->mask + 1)
        s_table_resize(t, (t->mask + 1) / 2); //  Failure is harmless
}

//  The model label for metrics: bounded cardinality, since clients pick it.
static const char *s_metric_model(s_broker_t *self, const char *model)
{
    if (zhashx_lookup(self->metric_models, model))
        return model;
    if (zhashx_size(self->metric_models) >= s_MAX_METRIC_MODELS)
        return "_other";
    zhashx_insert(self->metric_models, model, (void *)1);
    return model;
}

//  --------------------------------------------------------------------------
//  Payload sharing.

static void s_shared_release(void *data, void *hint)
{
    (void)data;
    s_shared_t *shared = (s_shared_t *)hint;
    if (atomic_fetch_sub(&shared->refs, 1) == 1)
        free(shared);
}

//  Take a message's payload into the request: the zmq_msg_t received with
//  LLMQ_MSG_RECV_PAYLOAD_MSG as it is, a frame's bytes copied.
static void s_payload_take(s_request_t *r, llmq_msg_t *msg)
{
    r->has_pmsg = llmq_msg_take_payload_msg(msg, &r->pmsg) == 0;
}

//  Give a waiting request a compact copy of its payload (see s_shared_t).
static void s_payload_compact(s_request_t *r)
{
    if (!r->has_pmsg)
        return;
    size_t size = zmq_msg_size(&r->pmsg);
    s_shared_t *shared = (s_shared_t *)malloc(sizeof(s_shared_t) + size);
    if (!shared)
        return; //  Keep the message: costs memory, still works
    atomic_init(&shared->refs, 1);
    shared->size = size;
    memcpy(shared->data, zmq_msg_data(&r->pmsg), size);
    zmq_msg_close(&r->pmsg);
    r->has_pmsg = false;
    r->shared = shared;
}

//  Send the request's payload as the last frame, sharing its bytes.
static void s_send_payload(s_request_t *r, void *socket)
{
    zmq_msg_t msg;
    if (r->has_pmsg) {
        //  libzmq shares a large message's bytes (a refcount), copies a
        //  small one.
        zmq_msg_init(&msg);
        if (zmq_msg_copy(&msg, &r->pmsg))
            zmq_msg_init(&msg);
        if (zmq_msg_send(&msg, socket, 0) == -1)
            zmq_msg_close(&msg);
        return;
    }
    size_t size = r->shared ? r->shared->size : 0;
    void *data = r->shared ? r->shared->data : NULL;
    if (size < 64) {
        //  Small: a copy is cheaper than the bookkeeping.
        zmq_msg_init_size(&msg, size);
        if (size)
            memcpy(zmq_msg_data(&msg), data, size);
    } else {
        atomic_fetch_add(&r->shared->refs, 1);
        if (zmq_msg_init_data(&msg, data, size, s_shared_release, r->shared)) {
            s_shared_release(NULL, r->shared);
            zmq_msg_init(&msg);
        }
    }
    if (zmq_msg_send(&msg, socket, 0) == -1)
        zmq_msg_close(&msg);
}

//  --------------------------------------------------------------------------
//  Replies.

//  Send `error` {code, message, id?} to a peer.
static void s_send_error(s_broker_t *self, zsock_t *socket, zframe_t *rid,
                         llmq_err_t code, const char *message, const char *id)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_ERROR);
    if (!msg)
        return;
    llmq_msg_set_code(msg, llmq_err_name(code));
    llmq_msg_set_message(msg, message);
    if (id)
        llmq_msg_set_id(msg, id);
    if (rid)
        llmq_msg_set_routing_id(msg, rid);
    llmq_msg_send(&msg, socket);
    (void)self;
}

//  Count an answer in counters and metrics.
static void s_count_answer(s_broker_t *self, const char *model,
                           const char *outcome, bool ok, int64_t latency_ms)
{
    if (ok)
        self->counters.answered_ok++;
    else
        self->counters.answered_error++;
    const char *label = s_metric_model(self, model ? model : "");
    const char *labels[] = {"model", label, "outcome", outcome, NULL};
    llmq_metrics_add(self->metrics, "llmq_broker_requests_total", labels, 1);
    const char *hist[] = {"model", label, NULL};
    llmq_metrics_observe(self->metrics, "llmq_broker_request_latency_seconds",
                         hist, (double)latency_ms / 1000.0);
}

//  Answer a request that never got queued (refused at the door). Takes msg.
//  As s_refuse, with retryable set as given (-1: the code's default).
static void s_refuse_as(s_broker_t *self, llmq_msg_t **msg_p, llmq_err_t code,
                        int retryable, const char *message)
{
    llmq_msg_t *req = *msg_p;
    *msg_p = NULL;
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    if (res) {
        llmq_msg_set_id(res, llmq_msg_id(req));
        llmq_msg_set_failure(res, code, 0, message);
        if (retryable >= 0)
            llmq_msg_set_error_retryable(res, retryable != 0);
        llmq_msg_set_latency_ms(res, 0);
        llmq_msg_set_attempt(res, 0);
        size_t meta_size = 0;
        const uint8_t *meta = llmq_msg_meta(req, &meta_size);
        if (meta)
            llmq_msg_set_meta(res, meta, meta_size);
        llmq_msg_set_routing_id(res, llmq_msg_routing_id(req));
        llmq_msg_send(&res, self->frontend);
    }
    s_count_answer(self, llmq_msg_model(req), llmq_err_name(code), false, 0);
    llmq_msg_destroy(&req);
}

static void s_refuse(s_broker_t *self, llmq_msg_t **msg_p, llmq_err_t code,
                     const char *message)
{
    s_refuse_as(self, msg_p, code, -1, message);
}

//  Remember to tell w that the result of dispatch bid reached its client,
//  so it can drop the copy it holds (sent by s_acks_flush).
static void s_ack_add(s_worker_t *w, uint64_t bid)
{
    if (w->nacks == w->acks_cap) {
        size_t cap = w->acks_cap ? w->acks_cap * 2 : 256;
        s_ack_t *acks = (s_ack_t *)realloc(w->acks, cap * sizeof(*acks));
        if (!acks)
            return; //  The worker's copy then expires on its own
        w->acks = acks;
        w->acks_cap = cap;
    }
    w->acks[w->nacks].bid = bid;
    w->acks[w->nacks++].at = w->last_seen; //  Now: it just sent the result
}

//  Send every worker the acks of results passed on at least
//  s_ACK_DELAY_MS ago, s_ACKS_PER_MSG per `ack`. The delay: a result in
//  our send queue to a slow client is lost if we are killed, so the
//  worker keeps its copy until the result has surely left.
static void s_acks_flush(s_broker_t *self, int64_t now)
{
    static char text[s_ACKS_PER_MSG][24];
    static const char *ids[s_ACKS_PER_MSG];
    s_worker_t *w = (s_worker_t *)zhashx_first(self->workers);
    while (w) {
        size_t due = 0;
        while (due < w->nacks && w->acks[due].at <= now - s_ACK_DELAY_MS)
            due++;
        for (size_t done = 0; done < due;) {
            size_t n = 0;
            while (n < s_ACKS_PER_MSG && done < due) {
                s_bid_text(w->acks[done++].bid, text[n]);
                ids[n] = text[n];
                n++;
            }
            llmq_msg_t *ack = llmq_msg_new(LLMQ_MSG_ACK);
            if (!ack)
                break;
            llmq_msg_set_ids(ack, ids, n);
            llmq_msg_set_routing_id(ack, w->rid);
            llmq_msg_send(&ack, self->backend);
            llmq_msg_destroy(&ack);
        }
        if (due) {
            memmove(w->acks, w->acks + due,
                    (w->nacks - due) * sizeof(*w->acks));
            w->nacks -= due;
        }
        w = (s_worker_t *)zhashx_next(self->workers);
    }
}

//  Send the answer of a request to its client (or module) and destroy the
//  request. res is a worker's `res` or one built here; takes it.
static void s_complete(s_broker_t *self, s_request_t *r, llmq_msg_t **res_p)
{
    llmq_msg_t *res = *res_p;
    *res_p = NULL;
    if (r->flight)
        s_cache_result(self, r, res);
    int64_t latency = zclock_mono() - r->received_at;
    bool ok = llmq_msg_ok(res);
    const char *outcome = "ok";
    if (!ok) {
        outcome = llmq_msg_error_code(res);
        //  Only known codes become labels: a worker's string is not trusted.
        if (!outcome || llmq_err_from_name(outcome) == LLMQ_ERR_NONE)
            outcome = "internal";
    }
    s_lane_t *lane = r->lane;
    if (ok && lane->m_ok) {
        //  The common case, through the lane's cached series.
        self->counters.answered_ok++;
        llmq_metrics_series_add(lane->m_ok, 1);
        llmq_metrics_series_observe(lane->m_latency, (double)latency / 1000.0);
    } else
        s_count_answer(self, lane->model, outcome, ok, latency);

    llmq_msg_set_id(res, r->id);
    llmq_msg_set_latency_ms(res, latency);
    llmq_msg_set_attempt(res, r->attempt);
    if (r->routed && !streq(r->routed, lane->model))
        llmq_msg_set_model(res, lane->model); //  What answered (3.6)
    if (r->worker) {
        llmq_msg_set_worker(res, r->worker->name);
        r->worker->answered++;
    }
    if (r->meta)
        llmq_msg_set_meta(res, r->meta, r->meta_size);
    else
        llmq_msg_clear(res, LLMQ_F_meta);
    //  The provider's rate-limit state is the worker's business.
    llmq_msg_clear(res, LLMQ_F_ratelimit_remaining_requests);
    llmq_msg_clear(res, LLMQ_F_ratelimit_remaining_tokens);
    llmq_msg_clear(res, LLMQ_F_ratelimit_reset_ms);
    if (r->client) {
        //  s_client_send sends to r->client->rid: no copy of it in res.
        if (self->config.verbose)
            llmq_msg_print(res);
        s_client_send(self, r->client, &res);
    } else if (r->from_module) {
        if (self->config.module->item_result)
            self->config.module->item_result(self->module_state, &res);
    } else if (r->fn)
        r->fn(&res, r->fn_arg);
    llmq_msg_destroy(&res);
    s_request_destroy(self, &r);
}

//  Answer a request with a failure and destroy it.
static void s_fail(s_broker_t *self, s_request_t *r, llmq_err_t code,
                   const char *message)
{
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    if (!res) {
        s_request_destroy(self, &r);
        return;
    }
    llmq_msg_set_failure(res, code, 0, message);
    s_complete(self, r, &res);
}

//  --------------------------------------------------------------------------
//  Tenants (PROTOCOL.md 3.4): who a client message is for, what each one
//  holds (for its caps), and the fair-share stamps of the lanes.

struct _s_tenant_t {
    size_t queued; //  Requests waiting, all lanes
    size_t bytes;  //  Their payload bytes
    size_t held;   //  Requests in the broker: waiting, parked or at workers
    char name[1];  //  Stored inline (the key in self->tenants)
};

//  A fair-share entry of a lane. Per (priority, tenant): the stamp of the
//  tenant's last waiting request. Per priority (the clock): the stamp of the
//  request last dispatched. A request is stamped one turn after the later of
//  the two (start-time fair queueing), so tenants take turns in the heap.
struct _s_fair_t {
    int64_t stamp;
    uint64_t served; //  The clock: dispatch counter when it last moved
    size_t count;    //  Waiting requests stamped through this entry
    s_fair_t *clock; //  A tenant's entry: the clock of its priority
    char key[1];     //  Stored inline (the key in lane->fair)
};

//  The tenant of a client message: under CURVE the peer's public key (the
//  User-Id the ZAP handler gave its connection), else the declared `tenant`
//  (advisory), else "". The one place that decides it.
static const char *s_tenant_of(s_broker_t *self, llmq_msg_t *msg)
{
    const char *key = self->auth ? llmq_msg_user_id(msg) : NULL;
    if (key && *key)
        return key;
    const char *declared = llmq_msg_tenant(msg);
    return declared ? declared : "";
}

//  FNV-1a 64 of a tenant: the suffix of its clients' keys (s_key_tenant).
static uint64_t s_tenant_fnv(const char *tenant)
{
    uint64_t h = 14695981039346656037ULL;
    for (const char *c = tenant; *c; c++)
        h = (h ^ (uint8_t)*c) * 1099511628211ULL;
    return h;
}

static void s_item_free(void **item)
{
    free(*item);
    *item = NULL;
}

//  A tenant holding requests, or NULL. The last one found is kept: most
//  requests come from the tenant of the one before.
static s_tenant_t *s_tenant_find(s_broker_t *self, const char *name)
{
    s_tenant_t *t = self->last_tenant;
    if (t && streq(t->name, name))
        return t;
    t = self->tenants ? (s_tenant_t *)zhashx_lookup(self->tenants, name) : NULL;
    if (t)
        self->last_tenant = t;
    return t;
}

static s_tenant_t *s_tenant_require(s_broker_t *self, const char *name)
{
    if (!self->tenants) {
        self->tenants = zhashx_new();
        if (!self->tenants)
            return NULL;
        zhashx_set_key_duplicator(self->tenants, NULL);
        zhashx_set_key_destructor(self->tenants, NULL);
        zhashx_set_destructor(self->tenants, s_item_free);
    }
    s_tenant_t *t = s_tenant_find(self, name);
    if (t)
        return t;
    size_t len = strlen(name);
    t = (s_tenant_t *)calloc(1, sizeof(*t) + len);
    if (!t)
        return NULL;
    memcpy(t->name, name, len + 1);
    zhashx_insert(self->tenants, t->name, t);
    return t;
}

//  A request of the tenant leaves the broker.
static void s_tenant_release(s_broker_t *self, s_request_t *r)
{
    s_tenant_t *t = r->owner;
    r->owner = NULL;
    if (t && --t->held == 0) {
        if (t == self->last_tenant)
            self->last_tenant = NULL;
        zhashx_delete(self->tenants, t->name);
    }
}

//  Why a request of `bytes` from tenant `name` must be refused (its caps,
//  the byte budget), or NULL to take it. why: room for the message.
static const char *s_tenant_refuse(s_broker_t *self, const char *name,
                                   size_t bytes, char *why, size_t size)
{
    const llmq_broker_config_t *c = &self->config;
    //  The tenant's books matter only to its own caps: no lookup without.
    s_tenant_t *t =
        self->tenants && (c->tenant_max_queue || c->tenant_max_bytes ||
                          c->tenant_max_inflight)
            ? s_tenant_find(self, name)
            : NULL;
    if (c->max_queue_bytes && self->queued_bytes + bytes > c->max_queue_bytes)
        snprintf(why, size, "broker queue full (%zu bytes waiting)",
                 self->queued_bytes);
    else if (t && c->tenant_max_queue && t->queued >= c->tenant_max_queue)
        snprintf(why, size, "tenant queue full (%zu requests waiting)",
                 t->queued);
    else if (c->tenant_max_bytes &&
             (t ? t->bytes : 0) + bytes > c->tenant_max_bytes)
        snprintf(why, size, "tenant queue full (%zu bytes waiting)",
                 t ? t->bytes : 0);
    else if (t && c->tenant_max_inflight && t->held >= c->tenant_max_inflight)
        snprintf(why, size, "tenant has %zu requests in the broker", t->held);
    else
        return NULL;
    return why;
}

//  The lane's entry for (priority, tenant), tenant NULL for the clock.
static s_fair_t *s_fair_require(s_lane_t *lane, int64_t priority,
                                const char *tenant)
{
    if (!lane->fair) {
        lane->fair = zhashx_new();
        if (!lane->fair)
            return NULL;
        zhashx_set_key_duplicator(lane->fair, NULL);
        zhashx_set_key_destructor(lane->fair, NULL);
        zhashx_set_destructor(lane->fair, s_item_free);
    }
    //  The key "<priority>\x1f<tenant>" (\x1e and no tenant for the clock),
    //  by hand: snprintf twice per request showed in the profile.
    char key[200], digits[24];
    size_t len = 0, n = 0;
    uint64_t p = priority < 0 ? 0 - (uint64_t)priority : (uint64_t)priority;
    if (priority < 0)
        key[len++] = '-';
    do {
        digits[n++] = (char)('0' + p % 10);
        p /= 10;
    } while (p);
    while (n)
        key[len++] = digits[--n];
    key[len++] = tenant ? '\x1f' : '\x1e';
    for (size_t i = 0; tenant && tenant[i] && i < 128; i++)
        key[len++] = tenant[i];
    key[len] = 0;
    s_fair_t *f = (s_fair_t *)zhashx_lookup(lane->fair, key);
    if (f)
        return f;
    f = (s_fair_t *)calloc(1, sizeof(*f) + len);
    if (!f)
        return NULL;
    memcpy(f->key, key, len + 1);
    zhashx_insert(lane->fair, f->key, f);
    return f;
}

//  The heap sequence of a request joining the back of its priority class:
//  its fair-share stamp, or the arrival counter with fair share off.
static int64_t s_fair_stamp(s_broker_t *self, s_request_t *r)
{
    if (self->config.no_fair_share)
        return ++self->next_seq;
    //  Alone in its lane with a worker free, it is dispatched at once: the
    //  entries it would make go with it (fresh ones stamp it 1).
    if (!llmq_queue_size(r->lane->queue) &&
        (!r->lane->fair || !zhashx_size(r->lane->fair)) &&
        s_best_worker(r->lane))
        return 1;
    s_lane_t *lane = r->lane;
    const char *name = r->owner ? r->owner->name : "";
    s_fair_t *clock, *mine = lane->fair_last;
    if (mine && lane->fair_priority == r->priority &&
        streq(lane->fair_name, name))
        clock = mine->clock;
    else {
        clock = s_fair_require(lane, r->priority, NULL);
        mine = clock ? s_fair_require(lane, r->priority, name) : NULL;
        if (!mine) {
            if (clock && !clock->count)
                zhashx_delete(lane->fair, clock->key);
            return INT64_MAX / 2; //  Out of memory: the back of the class
        }
        lane->fair_last = mine;
        lane->fair_priority = r->priority;
        lane->fair_name = strchr(mine->key, '\x1f') + 1;
    }
    mine->stamp = (mine->stamp > clock->stamp ? mine->stamp : clock->stamp) + 1;
    mine->count++;
    mine->clock = clock;
    clock->count++;
    r->fair = mine;
    return mine->stamp;
}

//  A request stops waiting: dispatched (its stamp moves the clock; served:
//  the dispatch counter) or not (served 0).
static void s_fair_leave(s_request_t *r, uint64_t served)
{
    s_fair_t *mine = r->fair;
    if (!mine)
        return;
    r->fair = NULL;
    s_fair_t *clock = mine->clock;
    if (served && r->qnode.seq > clock->stamp)
        clock->stamp = r->qnode.seq;
    if (served)
        clock->served = served;
    if (--mine->count == 0) {
        if (mine == r->lane->fair_last)
            r->lane->fair_last = NULL;
        zhashx_delete(r->lane->fair, mine->key);
    }
    if (--clock->count == 0)
        zhashx_delete(r->lane->fair, clock->key);
}

//  Book a request that joined (+1) or left (-1) its lane's queue.
static void s_tenant_queued(s_broker_t *self, s_request_t *r, int delta)
{
    s_tenant_t *t = r->owner;
    if (delta > 0) {
        self->queued_bytes += r->bytes;
        if (t && t->queued++ == 0)
            self->tenants_waiting++;
        if (t)
            t->bytes += r->bytes;
        return;
    }
    self->queued_bytes -= r->bytes;
    if (t && --t->queued == 0)
        self->tenants_waiting--;
    if (t)
        t->bytes -= r->bytes;
}

//  A request left its lane's queue (popped or removed).
static void s_dequeued(s_broker_t *self, s_request_t *r, bool dispatched)
{
    self->queued--;
    s_fair_leave(r, dispatched ? self->use_clock + 1 : 0);
    s_tenant_queued(self, r, -1);
}

//  --------------------------------------------------------------------------
//  Requests: expiry, queueing, unlinking.

//  Expiry keeps each request with an expiry time under a key no later
//  than that time, in one of two places: the expiry list when its key is
//  no earlier than the list's last one (keys made from the default
//  deadline come in order: O(1) in and out), else the expiry heap.

//  The key a request sits under, s_NO_EXPIRY if it sits nowhere.
static int64_t s_expiry_key(s_request_t *r)
{
    if (r->in_elist)
        return r->ekey;
    return llmq_queue_node_queued(&r->dnode) ? -r->dnode.priority : s_NO_EXPIRY;
}

static void s_expiry_unlink(s_broker_t *self, s_request_t *r)
{
    if (llmq_queue_node_queued(&r->dnode))
        llmq_queue_remove(self->expiry, &r->dnode);
    if (!r->in_elist)
        return;
    if (r->eprev)
        r->eprev->enext = r->enext;
    else
        self->elist_head = r->enext;
    if (r->enext)
        r->enext->eprev = r->eprev;
    else
        self->elist_tail = r->eprev;
    r->eprev = r->enext = NULL;
    r->in_elist = false;
}

static void s_expiry_link(s_broker_t *self, s_request_t *r, int64_t at)
{
    if (self->elist_tail && at < self->elist_tail->ekey) {
        llmq_queue_push(self->expiry, &r->dnode, -at, 0);
        return;
    }
    r->ekey = at;
    r->in_elist = true;
    r->enext = NULL;
    r->eprev = self->elist_tail;
    if (self->elist_tail)
        self->elist_tail->enext = r;
    else
        self->elist_head = r;
    self->elist_tail = r;
}

//  The request with the earliest key, or NULL.
static s_request_t *s_expiry_first(s_broker_t *self)
{
    llmq_queue_node_t *node = llmq_queue_peek(self->expiry);
    s_request_t *listed = self->elist_head;
    if (!node)
        return listed;
    if (listed && listed->ekey <= -node->priority)
        return listed;
    return LLMQ_QUEUE_ITEM(node, s_request_t, dnode);
}

//  Lazily for a later time: a request keeps its earlier key and s_expire
//  moves it on when that comes (so a dispatch, which only ever moves it
//  later, costs no update).
static void s_expiry_set(s_broker_t *self, s_request_t *r, int64_t at)
{
    r->expire_at = at;
    if (at == s_NO_EXPIRY)
        s_expiry_unlink(self, r);
    else if (at < s_expiry_key(r)) {
        s_expiry_unlink(self, r);
        s_expiry_link(self, r, at);
    }
}

//  When a waiting request must be looked at again: its deadline, or the end
//  of the wait for a worker if its lane has none.
static int64_t s_queued_expiry(s_broker_t *self, s_request_t *r)
{
    int64_t at = r->deadline;
    s_lane_t *lane = r->lane;
    if (zlistx_size(lane->workers) == 0) {
        int64_t since = lane->no_worker_since > r->received_at
                            ? lane->no_worker_since
                            : r->received_at;
        int64_t wait_end = since + self->config.no_worker_wait_ms;
        if (wait_end < at)
            at = wait_end;
    }
    return at;
}

//  Put a request in its lane: at the back of its priority class, or at the
//  front for a requeue.
static int s_enqueue(s_broker_t *self, s_request_t *r, bool front)
{
    int64_t seq = front ? --self->front_seq : s_fair_stamp(self, r);
    if (llmq_queue_push(r->lane->queue, &r->qnode, r->priority, seq)) {
        s_fair_leave(r, 0);
        return -1;
    }
    self->queued++;
    s_tenant_queued(self, r, 1);
    s_expiry_set(self, r, s_queued_expiry(self, r));
    return 0;
}

//  Take a dispatched request back from its worker's books.
static void s_request_unassign(s_broker_t *self, s_request_t *r)
{
    s_worker_t *w = r->worker;
    if (!w)
        return;
    if (r->wprev)
        r->wprev->wnext = r->wnext;
    else
        w->inflight = r->wnext;
    if (r->wnext)
        r->wnext->wprev = r->wprev;
    r->wprev = r->wnext = NULL;
    w->in_flight--;
    self->inflight_count--;
    uint32_t slot = (uint32_t)r->bid;
    self->slots[slot] = NULL;
    self->free_slots[self->nfree++] = slot;
    r->worker = NULL;
    r->bid = 0;
}

static void s_request_destroy(s_broker_t *self, s_request_t **r_p)
{
    s_request_t *r = *r_p;
    if (!r)
        return;
    *r_p = NULL;
    if (llmq_queue_node_queued(&r->qnode)) {
        llmq_queue_remove(r->lane->queue, &r->qnode);
        s_dequeued(self, r, false);
    }
    s_expiry_unlink(self, r);
    s_request_unassign(self, r);
    s_tenant_release(self, r);
    if (r->park) {
        zlistx_delete(self->parked, r->park);
        r->park = NULL;
    }
    if (r->flight)
        s_cache_release(self, r);
    if (r->client && s_pending_remove(self, r) == 0) {
        s_client_t *client = r->client;
        s_table_remove(&self->client_index, client->hash, client);
        zhashx_delete(self->clients, client->key);
    }
    if (--r->lane->refs == 0)
        r->lane->idle_since = zclock_mono();
    if (r->has_pmsg)
        zmq_msg_close(&r->pmsg);
    if (r->shared)
        s_shared_release(NULL, r->shared);
    if (r->meta || r->trace || r->tenant || r->routed) { //  Mostly none
        free(r->meta);
        free(r->trace);
        free(r->tenant);
        free(r->routed);
    }
    s_request_free(self, r);
}

//  Format a broker id "r<hex>" (snprintf is measurable on this path).
static void s_bid_text(uint64_t bid, char out[24])
{
    static const char hex[] = "0123456789abcdef";
    //  The digits counted first, then written last to first in place.
    int n = (64 - __builtin_clzll(bid | 1) + 3) / 4;
    out[0] = 'r';
    out[1 + n] = 0;
    for (int i = n; i > 0; i--, bid >>= 4)
        out[i] = hex[bid & 15];
}

//  A zeroed request with its id, and for a client's request (key: the
//  client's key) its request key "key:id", stored inline: one allocation,
//  from the pool of freed ones if they fit. NULL id allowed. Returns NULL
//  if out of memory.
static s_request_t *s_request_new(s_broker_t *self, const char *key,
                                  const char *id)
{
    size_t klen = key && id ? strlen(key) + 1 : 0,
           ilen = id ? strlen(id) + 1 : 0;
    size_t size = sizeof(s_request_t) + klen + ilen;
    s_request_t *r;
    if (size <= s_REQUEST_SIZE && self->pool) {
        r = self->pool;
        self->pool = r->cnext;
        self->npool--;
    } else if (!(r = (s_request_t *)malloc(
                     size <= s_REQUEST_SIZE ? s_REQUEST_SIZE : size)))
        return NULL;
    memset(r, 0, sizeof(*r));
    r->pooled = s_POOLED && size <= s_REQUEST_SIZE;
    char *text = (char *)(r + 1);
    if (klen) {
        r->rkey = text;
        memcpy(text, key, klen - 1);
        text[klen - 1] = ':';
        text += klen;
    }
    if (id) {
        r->id = text;
        memcpy(r->id, id, ilen);
    }
    llmq_queue_node_init(&r->qnode);
    llmq_queue_node_init(&r->dnode);
    return r;
}

//  Free a request's memory (NULL allowed): back to the pool if it fits.
static void s_request_free(s_broker_t *self, s_request_t *r)
{
    if (r && r->pooled && self->npool < s_POOL_MAX) {
        r->cnext = self->pool;
        self->pool = r;
        self->npool++;
    } else
        free(r);
}

//  In-flight lookup by broker id "r<hex>".
static s_request_t *s_inflight_lookup(s_broker_t *self, const char *id)
{
    if (!id || id[0] != 'r' || !id[1])
        return NULL;
    //  By hand: strtoull cost 400 instructions a result. The ids the
    //  broker makes (s_bid_text): lower-case hex, at most 16 digits, read
    //  through a table (digit value + 1, 0: not a digit).
    static const uint8_t digit[256] = {
        ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,
        ['6'] = 7,  ['7'] = 8,  ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12,
        ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16};
    const uint8_t *c = (const uint8_t *)id + 1;
    size_t n = strnlen((const char *)c, 17);
    if (n > 16)
        return NULL;
    uint64_t bid = 0;
    for (size_t i = 0; i < n; i++) {
        if (!digit[c[i]])
            return NULL;
        bid = bid << 4 | (uint64_t)(digit[c[i]] - 1);
    }
    if (bid == 0)
        return NULL;
    //  A slot number plus the dispatch that used it: O(1), no hashing, and a
    //  stale id (an earlier dispatch of the same slot) never matches.
    uint32_t slot = (uint32_t)bid;
    s_request_t *r = slot < self->nslots ? self->slots[slot] : NULL;
    return r && r->bid == bid ? r : NULL;
}

//  --------------------------------------------------------------------------
//  Clients, lanes, groups.

static void s_outbox_release(void *data, void *hint);

static void s_client_free(void **item)
{
    s_client_t *client = (s_client_t *)*item;
    if (!client)
        return;
    if (client->box)
        s_outbox_release(NULL, client->box);
    zframe_destroy(&client->rid);
    free(client->key);
    free(client);
    *item = NULL;
}

//  Who sent a client message, as the client index knows it: the hash of
//  its routing id and tenant, which together are what its key says.
typedef struct {
    uint64_t hash;   //  Its slot in the client index
    uint64_t tenant; //  FNV-1a of its tenant (s_key_tenant), 0 for none
    bool tenanted;   //  It has a tenant
} s_client_id_t;

//  The client entry of a message's sender (NULL: none yet), by its routing
//  id's bytes: no hex key, no string hashing. Fills *cid for
//  s_client_require.
static s_client_t *s_client_find(s_broker_t *self, llmq_msg_t *msg,
                                 s_client_id_t *cid)
{
    const char *tenant = s_tenant_of(self, msg);
    cid->tenanted = *tenant != 0;
    cid->tenant = cid->tenanted ? s_tenant_fnv(tenant) : 0;
    size_t n = 0;
    const uint8_t *rid = llmq_msg_routing_id_data(msg, &n);
    if (!rid)
        n = 0;
    cid->hash = s_hash_bytes(rid, n, self->seed ^ cid->tenant);
    size_t i = cid->hash & self->client_index.mask;
    s_client_t *c;
    while ((c = (s_client_t *)s_table_next(&self->client_index, cid->hash, &i)))
        if (c->tenant == cid->tenant && c->tenanted == cid->tenanted &&
            c->rid_size == n && !memcmp(c->rid_data, rid, n))
            return c;
    return NULL;
}

//  The client entry of key (the sender of a message, *cid as s_client_find
//  made it), made if new. NULL if out of memory.
static s_client_t *s_client_require(s_broker_t *self, const char *key,
                                    zframe_t *rid, const s_client_id_t *cid)
{
    s_client_t *client = (s_client_t *)zhashx_lookup(self->clients, key);
    if (client) { //  Known but not indexed: out of memory before
        s_table_insert(&self->client_index, client->hash, client);
        return client;
    }
    client = (s_client_t *)calloc(1, sizeof(*client));
    if (!client)
        return NULL;
    client->key = strdup(key);
    client->rid = zframe_dup(rid);
    client->last_seen = zclock_mono();
    client->hash = cid->hash;
    client->tenant = cid->tenant;
    client->tenanted = cid->tenanted;
    if (!client->key || !client->rid) {
        void *item = client;
        s_client_free(&item);
        return NULL;
    }
    client->rid_data = zframe_data(client->rid);
    client->rid_size = zframe_size(client->rid);
    zhashx_insert(self->clients, key, client);
    s_table_insert(&self->client_index, client->hash, client);
    s_client_heartbeat_restore(self, client);
    return client;
}

//  The pending table's hash of a client's request id.
static uint64_t s_pending_hash(s_broker_t *self, s_client_t *client,
                               const char *id)
{
    return s_hash_bytes(id, strlen(id),
                        self->seed ^ (uint64_t)(uintptr_t)client);
}

//  The pending request of a client with the client's id, or NULL.
static s_request_t *s_pending_find(s_broker_t *self, s_client_t *client,
                                   const char *id)
{
    if (!client || !id)
        return NULL;
    uint64_t hash = s_pending_hash(self, client, id);
    size_t i = hash & self->pending.mask;
    s_request_t *r;
    while ((r = (s_request_t *)s_table_next(&self->pending, hash, &i)))
        if (r->client == client && streq(r->id, id))
            return r;
    return NULL;
}

//  A client's request is pending: findable by its id, listed with its
//  client. Out of memory it is only listed (then no dedupe or cancel).
static void s_pending_add(s_broker_t *self, s_request_t *r)
{
    s_client_t *client = r->client;
    r->hash = s_pending_hash(self, client, r->id);
    s_table_insert(&self->pending, r->hash, r);
    r->cprev = NULL;
    r->cnext = client->requests;
    if (client->requests)
        client->requests->cprev = r;
    client->requests = r;
    client->npending++;
}

//  The request is no longer pending. Returns how many of its client's are.
static size_t s_pending_remove(s_broker_t *self, s_request_t *r)
{
    s_client_t *client = r->client;
    s_table_remove(&self->pending, r->hash, r);
    if (r->cprev)
        r->cprev->cnext = r->cnext;
    else
        client->requests = r->cnext;
    if (r->cnext)
        r->cnext->cprev = r->cprev;
    r->cprev = r->cnext = NULL;
    return --client->npending;
}

//  A worker serves a model it names, or any model if it names "*" (sim and
//  echo workers started without --model).
static bool s_models_match(s_worker_t *w, const char *model)
{
    for (size_t i = 0; i < w->nmodels; i++)
        if (streq(w->models[i], model) || streq(w->models[i], "*"))
            return true;
    return false;
}

static bool s_worker_serves(s_worker_t *w, s_lane_t *lane)
{
    if (w->leaving || (lane->pool && !streq(lane->pool, w->pool)))
        return false;
    return s_models_match(w, lane->model);
}

static void s_lane_free(void **item)
{
    s_lane_t *lane = (s_lane_t *)*item;
    if (!lane)
        return;
    llmq_queue_destroy(&lane->queue);
    zhashx_destroy(&lane->fair);
    zlistx_destroy(&lane->workers);
    free(lane->warr);
    free(lane->key);
    free(lane->model);
    free(lane->pool);
    free(lane);
    *item = NULL;
}

//  A worker serves the lane (both lists; the lane's array goes stale).
static void s_lane_link(s_lane_t *lane, s_worker_t *w)
{
    zlistx_add_end(lane->workers, w);
    lane->warr_fresh = false;
    zlistx_add_end(w->lanes, lane);
}

static s_lane_t *s_lane_require(s_broker_t *self, const char *model,
                                const char *pool)
{
    if (pool && !*pool)
        pool = NULL;
    //  Most requests go to the lane of the one before: no key, no lookup.
    s_lane_t *last = self->last_lane;
    if (last && streq(last->model, model) &&
        (pool ? last->pool && streq(last->pool, pool) : !last->pool))
        return last;
    //  On the hot path: the key is built on the stack (model <= 256 bytes,
    //  pool <= 128 by the protocol's limits).
    char key[512];
    size_t model_len = strnlen(model, 256),
           pool_len = pool ? strnlen(pool, 128) : 0;
    memcpy(key, model, model_len);
    key[model_len] = 0x1f;
    if (pool_len)
        memcpy(key + model_len + 1, pool, pool_len);
    key[model_len + 1 + pool_len] = 0;
    s_lane_t *lane = (s_lane_t *)zhashx_lookup(self->lanes, key);
    if (lane)
        return self->last_lane = lane;
    lane = (s_lane_t *)calloc(1, sizeof(*lane));
    if (!lane)
        return NULL;
    lane->key = strdup(key);
    lane->model = strdup(model);
    lane->pool = s_strdup_or_null(pool);
    lane->queue = llmq_queue_new();
    lane->workers = zlistx_new();
    lane->no_worker_since = zclock_mono();
    lane->idle_since = lane->no_worker_since;
    if (!lane->key || !lane->model || (pool && !lane->pool) || !lane->queue ||
        !lane->workers) {
        void *item = lane;
        s_lane_free(&item);
        return NULL;
    }
    zhashx_insert(self->lanes, key, lane);
    const char *label = s_metric_model(self, model);
    const char *ok_labels[] = {"model", label, "outcome", "ok", NULL};
    const char *model_labels[] = {"model", label, NULL};
    lane->m_ok = llmq_metrics_series(self->metrics,
                                     "llmq_broker_requests_total", ok_labels);
    lane->m_latency = llmq_metrics_series(
        self->metrics, "llmq_broker_request_latency_seconds", model_labels);
    //  Link the live workers that serve it.
    s_worker_t *w = (s_worker_t *)zhashx_first(self->workers);
    while (w) {
        if (s_worker_serves(w, lane)) {
            s_lane_link(lane, w);
        }
        w = (s_worker_t *)zhashx_next(self->workers);
    }
    return self->last_lane = lane;
}

//  Detach a worker from a lane; a lane left without workers starts its
//  wait-for-a-worker clock, for the requests already in it as well.
static void s_lane_drop_worker(s_broker_t *self, s_lane_t *lane, s_worker_t *w)
{
    void *handle = zlistx_find(lane->workers, w);
    if (handle)
        zlistx_delete(lane->workers, handle);
    lane->warr_fresh = false;
    if (zlistx_size(lane->workers) == 0) {
        int64_t now = zclock_mono();
        lane->no_worker_since = now;
        //  Rare (the last worker of a model went away): walk the lane once.
        for (size_t i = 0; i < llmq_queue_size(lane->queue); i++) {
            s_request_t *r = LLMQ_QUEUE_ITEM(llmq_queue_at(lane->queue, i),
                                             s_request_t, qnode);
            int64_t at = now + self->config.no_worker_wait_ms;
            if (r->deadline < at)
                at = r->deadline;
            if (at < r->expire_at)
                s_expiry_set(self, r, at);
        }
    }
}

static void s_group_free(void **item)
{
    s_group_t *group = (s_group_t *)*item;
    if (!group)
        return;
    zlistx_destroy(&group->members);
    free(group->name);
    free(group);
    *item = NULL;
}

//  Split the group's limit among its live members and tell each its share.
static void s_group_share(s_broker_t *self, s_group_t *group)
{
    size_t members = zlistx_size(group->members);
    if (members == 0)
        return;
    //  Members may disagree on the key's limit: the smallest one is safe.
    int64_t rpm = 0, tpm = 0;
    s_worker_t *w = (s_worker_t *)zlistx_first(group->members);
    while (w) {
        if (w->rpm > 0 && (rpm == 0 || w->rpm < rpm))
            rpm = w->rpm;
        if (w->tpm > 0 && (tpm == 0 || w->tpm < tpm))
            tpm = w->tpm;
        w = (s_worker_t *)zlistx_next(group->members);
    }
    if (rpm == 0 && tpm == 0)
        return; //  No limit known: nothing to split
    int64_t share_rpm = rpm ? rpm / (int64_t)members : 0;
    int64_t share_tpm = tpm ? tpm / (int64_t)members : 0;
    if (rpm && share_rpm < 1)
        share_rpm = 1;
    if (tpm && share_tpm < 1)
        share_tpm = 1;
    w = (s_worker_t *)zlistx_first(group->members);
    while (w) {
        w->share_rpm = share_rpm;
        w->share_tpm = share_tpm;
        llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_LIMITS);
        if (msg) {
            llmq_msg_set_limits_rpm(msg, share_rpm);
            llmq_msg_set_limits_tpm(msg, share_tpm);
            llmq_msg_set_routing_id(msg, w->rid);
            llmq_msg_send(&msg, self->backend);
        }
        w = (s_worker_t *)zlistx_next(group->members);
    }
    s_log(self, "info", "limits", LLMQ_LOG_STR("group", group->name),
          LLMQ_LOG_INT("members", members),
          LLMQ_LOG_INT("rpm_share", share_rpm),
          LLMQ_LOG_INT("tpm_share", share_tpm), s_END);
}

static void s_group_join(s_broker_t *self, s_worker_t *w, const char *name)
{
    s_group_t *group = (s_group_t *)zhashx_lookup(self->groups, name);
    if (!group) {
        group = (s_group_t *)calloc(1, sizeof(*group));
        if (!group)
            return;
        group->name = strdup(name);
        group->members = zlistx_new();
        if (!group->name || !group->members) {
            void *item = group;
            s_group_free(&item);
            return;
        }
        zhashx_insert(self->groups, name, group);
    }
    zlistx_add_end(group->members, w);
    w->group = group;
    s_group_share(self, group);
}

static void s_group_leave(s_broker_t *self, s_worker_t *w)
{
    s_group_t *group = w->group;
    if (!group)
        return;
    w->group = NULL;
    void *handle = zlistx_find(group->members, w);
    if (handle)
        zlistx_delete(group->members, handle);
    if (zlistx_size(group->members) == 0)
        zhashx_delete(self->groups, group->name);
    else
        s_group_share(self, group);
}

//  --------------------------------------------------------------------------
//  Dispatch.

//  The worker with the most credit among the healthy ones serving the lane
//  (ties: least recently used), or NULL. An unhealthy worker keeps its
//  credit but gets nothing new until a heartbeat says it is healthy again.
//  The lane's workers as an array (rebuilt when not fresh); NULL if out of
//  memory.
static s_worker_t **s_lane_workers(s_lane_t *lane)
{
    if (lane->warr_fresh)
        return lane->warr;
    size_t n = zlistx_size(lane->workers);
    s_worker_t **warr =
        (s_worker_t **)realloc(lane->warr, (n ? n : 1) * sizeof(*warr));
    if (!warr)
        return NULL;
    lane->warr = warr;
    lane->nwarr = 0;
    s_worker_t *w = (s_worker_t *)zlistx_first(lane->workers);
    for (; w && lane->nwarr < n; w = (s_worker_t *)zlistx_next(lane->workers))
        warr[lane->nwarr++] = w;
    lane->warr_fresh = true;
    return warr;
}

static bool s_better_worker(s_worker_t *w, s_worker_t *best)
{
    return w->credit > 0 && w->healthy && !w->silent &&
           (!best || w->credit > best->credit ||
            (w->credit == best->credit && w->last_used < best->last_used));
}

static s_worker_t *s_best_worker(s_lane_t *lane)
{
    s_worker_t *best = NULL;
    s_worker_t **warr = s_lane_workers(lane);
    if (!warr) { //  Out of memory: the list itself
        s_worker_t *w = (s_worker_t *)zlistx_first(lane->workers);
        for (; w; w = (s_worker_t *)zlistx_next(lane->workers))
            if (s_better_worker(w, best))
                best = w;
        return best;
    }
    for (size_t i = 0; i < lane->nwarr; i++)
        if (s_better_worker(warr[i], best))
            best = warr[i];
    return best;
}

//  Double the in-flight slot table (free slots are handed out from a stack).
static int s_slots_grow(s_broker_t *self)
{
    size_t grown = self->nslots ? self->nslots * 2 : 1024;
    if (grown > UINT32_MAX)
        return -1;
    s_request_t **slots =
        (s_request_t **)realloc(self->slots, grown * sizeof(*slots));
    if (!slots)
        return -1;
    self->slots = slots;
    uint32_t *free_slots =
        (uint32_t *)realloc(self->free_slots, grown * sizeof(*free_slots));
    if (!free_slots)
        return -1;
    self->free_slots = free_slots;
    //  Hand out low numbers first.
    for (size_t i = grown; i > self->nslots; i--) {
        self->slots[i - 1] = NULL;
        self->free_slots[self->nfree++] = (uint32_t)(i - 1);
    }
    self->nslots = grown;
    return 0;
}

//  Send a waiting request (already out of its lane) to a worker.
static void s_send_request(s_broker_t *self, s_worker_t *w, s_request_t *r)
{
    int64_t now = zclock_mono();
    if (self->nfree == 0 && s_slots_grow(self)) {
        s_fail(self, r, LLMQ_ERR_INTERNAL, "broker out of memory");
        return;
    }
    uint32_t slot = self->free_slots[--self->nfree];
    self->slots[slot] = r;
    r->bid = (++self->next_bid << 32) | slot;
    r->worker = w;
    r->wprev = NULL;
    r->wnext = w->inflight;
    if (w->inflight)
        w->inflight->wprev = r;
    w->inflight = r;
    r->sent_at = now;
    if (w->credit > 0)
        w->credit--; //  An attached resend may come without credit

    w->in_flight++;
    w->last_used = ++self->use_clock;
    self->inflight_count++;
    self->counters.dispatched++;
    //  A worker honours the deadline itself; the broker steps in only if
    //  the answer is very late.
    s_expiry_set(self, r,
                 r->deadline == s_NO_EXPIRY
                     ? s_NO_EXPIRY
                     : r->deadline + self->config.inflight_grace_ms);

    //  The `req` header written straight from the request (no message
    //  object): the fields in catalogue order, absent ones NULL.
    char bid[24];
    s_bid_text(r->bid, bid);
    int64_t deadline_ms = r->deadline > now + 1 ? r->deadline - now : 1;
    llmq_msg_entry_t fields[11];
    size_t n = 0;
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_id, bid, 0};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_op, s_ops[r->op], 0};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_model, r->lane->model, 0};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_pool, r->lane->pool, 0};
    if (r->stream)
        fields[n++] = (llmq_msg_entry_t){LLMQ_F_stream, NULL, 1};
    if (r->deadline != s_NO_EXPIRY)
        fields[n++] = (llmq_msg_entry_t){LLMQ_F_deadline_ms, NULL, deadline_ms};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_attempt, NULL, r->attempt};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_trace, r->trace, 0};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_rkey, r->rkey, 0};
    if (r->resend)
        fields[n++] = (llmq_msg_entry_t){LLMQ_F_resend, NULL, 1};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_tenant, r->tenant, 0};
    zmq_msg_t header;
    int encoded =
        llmq_msg_encode_entries(LLMQ_MSG_REQ, fields, n, &header, NULL, 0);
    if (encoded) {
        s_fail(self, r, LLMQ_ERR_INTERNAL,
               "broker could not encode the request");
        return;
    }
    //  Straight to libzmq: the routing id copied into a small message,
    //  the header as encoded, the payload shared (no zframe per frame).
    void *socket = zsock_resolve(self->backend);
    zmq_send(socket, zframe_data(w->rid), zframe_size(w->rid), ZMQ_SNDMORE);
    if (zmq_msg_send(&header, socket, ZMQ_SNDMORE) == -1)
        zmq_msg_close(&header);
    s_send_payload(r, socket);
}

//  Send the first waiting request of a lane to the best worker.
static bool s_dispatch_one(s_broker_t *self, s_lane_t *lane)
{
    if (!llmq_queue_size(lane->queue))
        return false;
    s_worker_t *w = s_best_worker(lane);
    if (!w)
        return false;
    llmq_queue_node_t *node = llmq_queue_pop(lane->queue);
    s_request_t *r = LLMQ_QUEUE_ITEM(node, s_request_t, qnode);
    s_dequeued(self, r, true);
    s_send_request(self, w, r);
    return true;
}

static void s_dispatch_lane(s_broker_t *self, s_lane_t *lane)
{
    while (s_dispatch_one(self, lane))
        ;
}

static bool s_serves(const char *model, const char *pool, void *arg)
{
    s_worker_t *w = (s_worker_t *)arg;
    if (!model || (pool && *pool && !streq(pool, w->pool)))
        return false;
    return s_models_match(w, model);
}

//  Spare credit and no waiting request: ask the module for items.
static void s_dispatch_module(s_broker_t *self, s_worker_t *w)
{
    while (w->credit > 0 && w->healthy && !w->silent && !self->draining) {
        llmq_msg_t *msg =
            self->config.module->next_item(self->module_state, s_serves, w);
        if (!msg)
            break;
        int op = -1;
        for (int i = 0; i < 3; i++)
            if (llmq_msg_op(msg) && streq(llmq_msg_op(msg), s_ops[i]))
                op = i;
        const char *model = llmq_msg_model(msg);
        s_lane_t *lane = op >= 0 && model && llmq_msg_id(msg) &&
                                 s_serves(model, llmq_msg_pool(msg), w)
                             ? s_lane_require(self, model, llmq_msg_pool(msg))
                             : NULL;
        s_request_t *r =
            lane ? s_request_new(self, NULL, llmq_msg_id(msg)) : NULL;
        if (!r) {
            //  A module bug, not the worker's: give the item back, stop asking.
            if (self->config.module->item_returned && llmq_msg_id(msg))
                self->config.module->item_returned(self->module_state,
                                                   llmq_msg_id(msg));
            llmq_msg_destroy(&msg);
            break;
        }
        llmq_queue_node_init(&r->qnode);
        llmq_queue_node_init(&r->dnode);
        r->from_module = true;
        r->lane = lane;
        lane->refs++;
        r->op = (uint8_t)op;
        r->priority = llmq_msg_priority(msg);
        r->received_at = zclock_mono();
        r->deadline = s_NO_EXPIRY;
        r->attempt = 1;
        r->max_attempts = 1;
        s_payload_take(r, msg);
        llmq_msg_destroy(&msg);
        self->counters.received++;
        s_send_request(self, w, r);
    }
}

//  Between the heads of two lanes of one priority: the earlier arrival, or
//  with fair share the one fewer turns ahead of its lane's clock (stamps of
//  different lanes count different turns), then the lane served least
//  recently, so lanes take turns too. Requeued ones come first.
static bool s_head_before(s_broker_t *self, llmq_queue_node_t *a,
                          llmq_queue_node_t *b)
{
    if (self->config.no_fair_share)
        return a->seq < b->seq;
    s_request_t *ra = LLMQ_QUEUE_ITEM(a, s_request_t, qnode),
                *rb = LLMQ_QUEUE_ITEM(b, s_request_t, qnode);
    int64_t lag_a = ra->fair ? a->seq - ra->fair->clock->stamp : a->seq,
            lag_b = rb->fair ? b->seq - rb->fair->clock->stamp : b->seq;
    if (lag_a != lag_b)
        return lag_a < lag_b;
    uint64_t served_a = ra->fair ? ra->fair->clock->served : 0,
             served_b = rb->fair ? rb->fair->clock->served : 0;
    if (served_a != served_b)
        return served_a < served_b;
    return ra->received_at < rb->received_at;
}

//  A worker has credit: serve its lanes, best waiting request first.
static void s_dispatch_worker(s_broker_t *self, s_worker_t *w)
{
    while (w->credit > 0 && w->healthy && !w->silent && !w->leaving) {
        s_lane_t *best = NULL;
        llmq_queue_node_t *best_head = NULL;
        s_lane_t *lane = (s_lane_t *)zlistx_first(w->lanes);
        while (lane) {
            llmq_queue_node_t *head = llmq_queue_peek(lane->queue);
            if (head && (!best_head || head->priority > best_head->priority ||
                         (head->priority == best_head->priority &&
                          s_head_before(self, head, best_head)))) {
                best = lane;
                best_head = head;
            }
            lane = (s_lane_t *)zlistx_next(w->lanes);
        }
        if (!best || !s_dispatch_one(self, best))
            break;
    }
    if (w->credit > 0 && w->healthy && !w->silent && !w->leaving &&
        self->config.module && self->config.module->next_item)
        s_dispatch_module(self, w);
}

//  --------------------------------------------------------------------------
//  Workers.

static void s_worker_free(void **item)
{
    s_worker_t *w = (s_worker_t *)*item;
    if (!w)
        return;
    for (size_t i = 0; i < w->nmodels; i++)
        free(w->models[i]);
    free(w->models);
    zlistx_destroy(&w->lanes);
    zframe_destroy(&w->rid);
    free(w->key);
    free(w->name);
    free(w->pool);
    free(w->provider);
    free(w->version);
    free(w->acks);
    free(w);
    *item = NULL;
}

//  Stop giving a worker new work: out of its lanes and its limit group.
static void s_worker_retire(s_broker_t *self, s_worker_t *w)
{
    w->leaving = true;
    w->credit = 0;
    s_lane_t *lane = (s_lane_t *)zlistx_first(w->lanes);
    while (lane) {
        s_lane_drop_worker(self, lane, w);
        lane = (s_lane_t *)zlistx_next(w->lanes);
    }
    zlistx_purge(w->lanes);
    s_group_leave(self, w);
}

//  A request whose worker died or left: back to the front of its lane, or
//  answered. Streams the client saw chunks of are never sent again (no
//  splicing); a request with a death count of s_MAX_DEATHS is abandoned
//  as a suspected poison request (PROTOCOL.md 3.3). weight: what this
//  death adds to its count (0 when the worker left).
static void s_request_orphaned(s_broker_t *self, s_request_t *r,
                               const char *wname, const char *why, int weight)
{
    char message[300];
    if (r->chunks > 0) {
        snprintf(message, sizeof(message),
                 "stream interrupted after %u chunks (worker %s %s)", r->chunks,
                 wname, why);
        s_fail(self, r, LLMQ_ERR_PROVIDER_ERROR, message);
        return;
    }
    int deaths = r->deaths + weight;
    r->deaths = (uint8_t)(deaths > 255 ? 255 : deaths);
    if (r->deaths >= s_MAX_DEATHS) {
        snprintf(message, sizeof(message),
                 "request abandoned: %d workers died while holding it "
                 "(death count %d of %d, last %s); suspected poison request",
                 r->attempt, r->deaths, s_MAX_DEATHS, wname);
        llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
        if (!res) {
            s_request_destroy(self, &r);
            return;
        }
        llmq_msg_set_failure(res, LLMQ_ERR_INTERNAL, 0, message);
        llmq_msg_set_error_retryable(res, false);
        s_complete(self, r, &res);
        return;
    }
    if (r->attempt < 255)
        r->attempt++;
    self->counters.requeued++;
    llmq_metrics_add(self->metrics, "llmq_broker_requeues_total", NULL, 1);
    if (s_enqueue(self, r, true))
        s_fail(self, r, LLMQ_ERR_INTERNAL,
               "broker could not requeue the request");
}

//  What a worker's death adds to the death count of a request it held
//  (PROTOCOL.md 3.3). L is the worker's last sign of life. A request that
//  may have killed it: dispatched within s_SURVIVED_MS before L, or the
//  first one dispatched after L (it died on receipt), or any request of a
//  worker that held at most 2: s_STRONG_DEATH. One dispatched after that
//  first one went to a worker that was already dead: 0. One the worker
//  survived for s_SURVIVED_MS or more: 1.
static int s_death_weight(s_worker_t *w, s_request_t *r, int64_t held,
                          s_request_t *first_after)
{
    int64_t last = w->last_seen;
    if (held <= 2 || r == first_after ||
        (r->sent_at <= last && last - r->sent_at < s_SURVIVED_MS))
        return s_STRONG_DEATH;
    return r->sent_at > last ? 0 : 1;
}

//  Forget a worker. Its in-flight requests go back to the front of their
//  lanes (attempt + 1) or are answered (s_request_orphaned); a death adds
//  to their death counts (s_death_weight).
static void s_worker_remove(s_broker_t *self, s_worker_t *w, const char *why)
{
    s_worker_retire(self, w);
    bool died = streq(why, "died");
    int64_t held = w->in_flight;
    s_request_t *first_after = NULL;
    for (s_request_t *r = w->inflight; r; r = r->wnext)
        if (r->sent_at > w->last_seen &&
            (!first_after || r->sent_at <= first_after->sent_at))
            first_after = r;
    while (w->inflight) {
        s_request_t *r = w->inflight;
        int weight = died ? s_death_weight(w, r, held, first_after) : 0;
        s_request_unassign(self, r);
        if (r->from_module) {
            if (self->config.module->item_returned)
                self->config.module->item_returned(self->module_state, r->id);
            s_request_destroy(self, &r);
            continue;
        }
        s_request_orphaned(self, r, w->name, why, weight);
    }
    s_table_remove(&self->worker_index, w->hash, w);
    zhashx_delete(self->workers, w->key);
    //  Requeued requests may have other workers waiting for them.
    s_lane_t *lane = (s_lane_t *)zhashx_first(self->lanes);
    while (lane) {
        if (llmq_queue_size(lane->queue) && zlistx_size(lane->workers))
            s_dispatch_lane(self, lane);
        lane = (s_lane_t *)zhashx_next(self->lanes);
    }
}

//  A repeated hello from a registered routing id. Routing ids carry the
//  worker's pid, so this is the same process (it answered a stale "hello
//  first", or reconnected after a silence): it still holds its in-flight
//  requests, which stay where they are. Its registration is refreshed and
//  its credit reset to 0, as the worker re-grants its free slots after every
//  hello (the credit cap in s_handle_worker absorbs requests still on their
//  way against the old credit).
static void s_worker_refresh(s_broker_t *self, s_worker_t *w, llmq_msg_t *msg,
                             int64_t capacity)
{
    size_t nmodels = llmq_msg_models_count(msg);
    char **models = (char **)calloc(nmodels + 1, sizeof(char *));
    char *name = strdup(llmq_msg_worker(msg));
    char *pool = strdup(llmq_msg_pool(msg));
    char *provider = strdup(llmq_msg_provider(msg));
    char *version = strdup(llmq_msg_version(msg) ? llmq_msg_version(msg) : "");
    bool failed = !models || !name || !pool || !provider || !version;
    for (size_t i = 0; !failed && i < nmodels; i++)
        failed = !(models[i] = strdup(llmq_msg_models_at(msg, i)));
    if (failed) {
        //  Out of memory: keep the old registration, only the credit reset.
        for (size_t i = 0; models && i < nmodels; i++)
            free(models[i]);
        free(models);
        free(name);
        free(pool);
        free(provider);
        free(version);
        w->credit = 0;
        return;
    }
    for (size_t i = 0; i < w->nmodels; i++)
        free(w->models[i]);
    free(w->models);
    free(w->name);
    free(w->pool);
    free(w->provider);
    free(w->version);
    w->models = models;
    w->nmodels = nmodels;
    w->name = name;
    w->pool = pool;
    w->provider = provider;
    w->version = version;
    w->capacity = capacity;
    w->credit = 0;
    w->batch_api = llmq_msg_batch_api(msg);
    w->leaving = false; //  A hello after bye: it serves again

    //  Lanes: leave those it no longer serves, join the new ones.
    //  (Out of memory for the new list: it stays in its old lanes.)
    zlistx_t *keep = zlistx_new();
    s_lane_t *lane = keep ? (s_lane_t *)zlistx_first(w->lanes) : NULL;
    while (lane) {
        if (s_worker_serves(w, lane))
            zlistx_add_end(keep, lane);
        else
            s_lane_drop_worker(self, lane, w);
        lane = (s_lane_t *)zlistx_next(w->lanes);
    }
    if (keep) {
        zlistx_destroy(&w->lanes);
        w->lanes = keep;
    }
    lane = (s_lane_t *)zhashx_first(self->lanes);
    while (lane) {
        if (s_worker_serves(w, lane) && !zlistx_find(w->lanes, lane)) {
            s_lane_link(lane, w);
        }
        lane = (s_lane_t *)zhashx_next(self->lanes);
    }
    //  Limit group: rejoin only if it or the key's limit changed.
    const char *group = llmq_msg_limit_group(msg);
    if (group && !*group)
        group = NULL;
    int64_t rpm = llmq_msg_limits_rpm(msg), tpm = llmq_msg_limits_tpm(msg);
    bool same_group = w->group ? group && streq(w->group->name, group) : !group;
    if (!same_group || rpm != w->rpm || tpm != w->tpm) {
        s_group_leave(self, w);
        w->rpm = rpm;
        w->tpm = tpm;
        if (group)
            s_group_join(self, w, group);
    }
    s_log(self, "info", "worker_hello_again", LLMQ_LOG_STR("worker", w->name),
          LLMQ_LOG_INT("in_flight", w->in_flight), s_END);
}

//  A worker that says hello again with `resend` reconnected: its old
//  connection died with
//  whatever was queued on it either way (a `req` it never got, a `res` we
//  never got). Each request still in flight there that has a request key is
//  sent again as an attached resend (PROTOCOL.md 3.3): the worker answers
//  from what it runs or holds, or runs it if it never got it.
static void s_worker_reattach(s_broker_t *self, s_worker_t *w)
{
    s_request_t *again = NULL;
    s_request_t *r = w->inflight;
    while (r) {
        s_request_t *next = r->wnext;
        if (r->rkey && !r->from_module) {
            s_request_unassign(self, r);
            r->resend = true;
            r->wnext = again; //  A list of its own until resent
            again = r;
        }
        r = next;
    }
    while (again) {
        r = again;
        again = r->wnext;
        r->wnext = NULL;
        llmq_metrics_add(self->metrics, "llmq_broker_attached_total", NULL, 1);
        s_send_request(self, w, r);
    }
}

static void s_worker_hello(s_broker_t *self, const char *key, llmq_msg_t *msg)
{
    int64_t capacity = llmq_msg_capacity(msg);
    if (capacity < 1 || capacity > 1000000) {
        s_send_error(self, self->backend, llmq_msg_routing_id(msg),
                     LLMQ_ERR_BAD_MESSAGE, "capacity must be 1..1000000", NULL);
        return;
    }
    size_t caps_size = 0; //  What it knows of its models (3.8)
    const uint8_t *caps = llmq_msg_caps(msg, &caps_size);
    if (caps) {
        llmq_models_caps_learn(self->models, caps, caps_size);
        self->models_gen++; //  A lane's unknown model may be known now
    }
    s_worker_t *old = (s_worker_t *)zhashx_lookup(self->workers, key);
    if (old) {
        s_worker_refresh(self, old, msg, capacity);
        if (llmq_msg_resend(msg))
            s_worker_reattach(self, old);
        return;
    }
    s_worker_t *w = (s_worker_t *)calloc(1, sizeof(*w));
    if (!w)
        return;
    w->key = strdup(key);
    w->rid = zframe_dup(llmq_msg_routing_id(msg));
    w->name = strdup(llmq_msg_worker(msg));
    w->pool = strdup(llmq_msg_pool(msg));
    w->provider = strdup(llmq_msg_provider(msg));
    w->version = strdup(llmq_msg_version(msg) ? llmq_msg_version(msg) : "");
    w->nmodels = llmq_msg_models_count(msg);
    w->models = (char **)calloc(w->nmodels + 1, sizeof(char *));
    w->lanes = zlistx_new();
    bool failed = !w->key || !w->rid || !w->name || !w->pool || !w->provider ||
                  !w->version || !w->models || !w->lanes;
    for (size_t i = 0; !failed && i < w->nmodels; i++)
        failed = !(w->models[i] = strdup(llmq_msg_models_at(msg, i)));
    if (failed) {
        void *item = w;
        s_worker_free(&item);
        return;
    }
    w->capacity = capacity;
    w->rpm = llmq_msg_limits_rpm(msg);
    w->tpm = llmq_msg_limits_tpm(msg);
    w->batch_api = llmq_msg_batch_api(msg);
    w->healthy = true;
    w->last_seen = zclock_mono();
    w->rid_data = zframe_data(w->rid);
    w->rid_size = zframe_size(w->rid);
    w->hash = s_hash_bytes(w->rid_data, w->rid_size, self->seed);
    zhashx_insert(self->workers, key, w);
    s_table_insert(&self->worker_index, w->hash, w);
    s_lane_t *lane = (s_lane_t *)zhashx_first(self->lanes);
    while (lane) {
        if (s_worker_serves(w, lane)) {
            s_lane_link(lane, w);
        }
        lane = (s_lane_t *)zhashx_next(self->lanes);
    }
    char models[512] = "";
    for (size_t i = 0, pos = 0; i < w->nmodels && pos < sizeof(models); i++)
        pos += (size_t)snprintf(models + pos, sizeof(models) - pos, "%s%s",
                                i ? "," : "", w->models[i]);
    const char *group = llmq_msg_limit_group(msg);
    s_log(self, "info", "worker_join", LLMQ_LOG_STR("worker", w->name),
          LLMQ_LOG_STR("pool", w->pool), LLMQ_LOG_STR("provider", w->provider),
          LLMQ_LOG_STR("models", models), LLMQ_LOG_INT("capacity", capacity),
          LLMQ_LOG_STR("limit_group", group ? group : ""), s_END);
    if (group && *group)
        s_group_join(self, w, group);
}

//  The usage a worker reports in a `res`, made sane before anything uses
//  it (the client's `res`, the batch store, counters, metrics), by the one
//  rule (llmq_usage_clean): NaN, infinite, negative or absurd values
//  become 0. Each such result is counted (status `bad_usage`, metric
//  llmq_broker_bad_usage_total); the worker is logged once.
static void s_worker_usage_check(s_broker_t *self, s_worker_t *w,
                                 llmq_msg_t *res)
{
    int64_t prompt = llmq_msg_usage_prompt_tokens(res);
    int64_t completion = llmq_msg_usage_completion_tokens(res);
    int64_t total = llmq_msg_usage_total_tokens(res);
    double cost = llmq_msg_usage_cost_usd(res);
    if (llmq_usage_clean(&prompt, &completion, &total, &cost) == 0)
        return;
    llmq_msg_set_usage_prompt_tokens(res, prompt);
    llmq_msg_set_usage_completion_tokens(res, completion);
    llmq_msg_set_usage_total_tokens(res, total ? total : prompt + completion);
    llmq_msg_set_usage_cost_usd(res, cost);
    self->counters.bad_usage++;
    llmq_metrics_add(self->metrics, "llmq_broker_bad_usage_total", NULL, 1);
    if (!w->bad_usage_logged) {
        w->bad_usage_logged = true;
        s_log(self, "warning", "worker_bad_usage",
              LLMQ_LOG_STR("worker", w->name),
              LLMQ_LOG_STR("detail", "NaN, infinite, negative or absurd "
                                     "usage counted as 0 (logged once)"),
              s_END);
    }
}

static void s_spend_add(s_broker_t *self, s_request_t *r, double usd);
static bool s_route_retry(s_broker_t *self, s_request_t *r, llmq_msg_t **res);

//  A worker's `res` or `chunk`; r: its request if s_worker_sender found it
//  (NULL: looked up here).
static void s_worker_result(s_broker_t *self, s_worker_t *w, s_request_t *r,
                            llmq_msg_t **msg_p)
{
    llmq_msg_t *msg = *msg_p;
    if (!r)
        r = s_inflight_lookup(self, llmq_msg_id(msg));
    if (!r || r->worker != w) {
        //  Already answered, cancelled, expired or requeued elsewhere.
        if (llmq_msg_type(msg) == LLMQ_MSG_RES) {
            self->counters.dropped++;
            const char *labels[] = {"reason", "unknown_result", NULL};
            llmq_metrics_add(self->metrics, "llmq_broker_dropped_total", labels,
                             1);
        }
        llmq_msg_destroy(msg_p);
        return;
    }
    if (llmq_msg_type(msg) == LLMQ_MSG_CHUNK) {
        if (!r->client) {
            llmq_msg_destroy(msg_p);
            return;
        }
        r->chunks++;
        llmq_msg_set_id(msg, r->id);
        llmq_msg_set_routing_id(msg, r->client->rid);
        llmq_msg_clear(msg, LLMQ_F_ratelimit_remaining_requests);
        llmq_msg_clear(msg, LLMQ_F_ratelimit_remaining_tokens);
        llmq_msg_clear(msg, LLMQ_F_ratelimit_reset_ms);
        s_client_send(self, r->client, msg_p);
        return;
    }
    //  Only a result the worker sent is acked (not one the broker made up:
    //  the worker's own result is still to come and must be kept).
    if (r->rkey)
        s_ack_add(w, r->bid);
    s_worker_usage_check(self, w, msg);
    s_spend_add(self, r, llmq_msg_usage_cost_usd(msg));
    const char *answered = llmq_msg_model(msg); //  Tokens and cost (3.8)
    s_lane_t *lane = r->lane;
    if (!answered && !lane->m_model) //  (model labels are never dropped)
        lane->m_model = s_metric_model(self, lane->model);
    llmq_metrics_usage(
        self->metrics,
        answered ? s_metric_model(self, answered) : lane->m_model,
        llmq_msg_usage_prompt_tokens(msg),
        llmq_msg_usage_completion_tokens(msg), llmq_msg_usage_cost_usd(msg));
    if (!r->routed || !s_route_retry(self, r, msg_p))
        s_complete(self, r, msg_p);
    if (w->leaving && w->in_flight == 0) {
        s_log(self, "info", "worker_gone", LLMQ_LOG_STR("worker", w->name),
              s_END);
        s_worker_remove(self, w, "left");
    }
}

//  The pending client request with request key rkey ("client:id"), or NULL.
static s_request_t *s_pending_by_rkey(s_broker_t *self, const char *rkey)
{
    const char *colon = strchr(rkey, ':');
    if (!colon || colon - rkey >= 520)
        return NULL;
    char key[520];
    memcpy(key, rkey, (size_t)(colon - rkey));
    key[colon - rkey] = 0;
    s_client_t *client = (s_client_t *)zhashx_lookup(self->clients, key);
    return s_pending_find(self, client, colon + 1);
}

//  Send a waiting (queued or parked) request to the worker that holds its
//  result or still runs it: the worker answers from that (3.3).
static void s_attach(s_broker_t *self, s_worker_t *w, s_request_t *r)
{
    if (llmq_queue_node_queued(&r->qnode)) {
        llmq_queue_remove(r->lane->queue, &r->qnode);
        s_dequeued(self, r, false);
    }
    if (r->park) {
        zlistx_delete(self->parked, r->park);
        r->park = NULL;
    }
    llmq_metrics_add(self->metrics, "llmq_broker_attached_total", NULL, 1);
    s_send_request(self, w, r);
}

//  A resend: attach it if a live worker reported its key. Returns true if
//  it was sent.
static bool s_attach_resend(s_broker_t *self, s_request_t *r)
{
    s_attach_t *a = (s_attach_t *)zhashx_lookup(self->attach, r->rkey);
    if (!a)
        return false;
    s_worker_t *w = (s_worker_t *)zhashx_lookup(self->workers, a->worker);
    zhashx_delete(self->attach, r->rkey);
    if (!w)
        return false;
    s_attach(self, w, r);
    return true;
}

//  `held` after a hello: request keys the worker has a result for or still
//  runs. A waiting resend of one is attached at once; the others are kept
//  for a resend yet to come.
typedef struct {
    s_broker_t *self;
    s_worker_t *w;
} s_held_t;

static int s_held_key(const char *key, void *arg)
{
    s_held_t *h = (s_held_t *)arg;
    if (!key[0])
        return 0;
    s_request_t *r = s_pending_by_rkey(h->self, key);
    if (r) {
        if (!r->worker && !r->from_module)
            s_attach(h->self, h->w, r);
        return 0;
    }
    size_t len = strlen(h->w->key);
    s_attach_t *a = (s_attach_t *)malloc(sizeof(s_attach_t) + len);
    if (!a)
        return 1;
    a->at = zclock_mono();
    memcpy(a->worker, h->w->key, len + 1);
    zhashx_update(h->self->attach, key, a);
    return 0;
}

static void s_worker_held(s_broker_t *self, s_worker_t *w, llmq_msg_t *msg)
{
    zframe_t *payload = llmq_msg_payload(msg);
    s_held_t h = {self, w};
    if (payload)
        llmq_payload_each_str(zframe_data(payload), zframe_size(payload),
                              s_held_key, &h, NULL, 0);
}

//  The worker a result comes from, without its key or a table lookup: the
//  request's worker if the routing ids match (else NULL: the caller looks
//  the sender up by key). *r_p: the request, then, for s_worker_result.
static s_worker_t *s_result_worker(s_broker_t *self, llmq_msg_t *msg,
                                   s_request_t **r_p)
{
    s_request_t *r = s_inflight_lookup(self, llmq_msg_id(msg));
    if (!r || !r->worker)
        return NULL;
    size_t n = 0;
    const uint8_t *rid = llmq_msg_routing_id_data(msg, &n);
    s_worker_t *w = r->worker;
    if (!rid || n != w->rid_size || memcmp(rid, w->rid_data, n))
        return NULL;
    *r_p = r;
    return r->worker;
}

//  A known worker by the bytes of a message's routing id, or NULL.
static s_worker_t *s_worker_find(s_broker_t *self, llmq_msg_t *msg)
{
    size_t n = 0;
    const uint8_t *rid = llmq_msg_routing_id_data(msg, &n);
    if (!rid)
        n = 0;
    uint64_t hash = s_hash_bytes(rid, n, self->seed);
    size_t i = hash & self->worker_index.mask;
    s_worker_t *w;
    while ((w = (s_worker_t *)s_table_next(&self->worker_index, hash, &i)))
        if (w->rid_size == n && !memcmp(w->rid_data, rid, n))
            return w;
    return NULL;
}

//  The known worker a message comes from (NULL: none), alive again. key
//  gets the sender's key for a hello or an unknown sender ("" otherwise:
//  a worker is found by its routing id's bytes, a result's through its
//  request, into *r_p; else NULL).
static s_worker_t *s_worker_sender(s_broker_t *self, llmq_msg_t *msg, char *key,
                                   size_t size, s_request_t **r_p)
{
    llmq_msg_type_t type = llmq_msg_type(msg);
    *r_p = NULL;
    s_worker_t *w = type == LLMQ_MSG_RES || type == LLMQ_MSG_CHUNK
                        ? s_result_worker(self, msg, r_p)
                        : NULL;
    key[0] = 0;
    if (!w)
        w = s_worker_find(self, msg);
    if (!w || type == LLMQ_MSG_HELLO) {
        s_msg_key(msg, key, size);
        if (!w)
            w = (s_worker_t *)zhashx_lookup(self->workers, key);
    }
    if (w) {
        w->last_seen = zclock_mono(); //  Any message is a sign of life
        if (w->silent) {
            w->silent = false;
            *r_p = NULL; //  Dispatching may change the books: look again
            s_dispatch_worker(self, w);
        }
    }
    return w;
}

//  A worker's credit: never more outstanding than the worker's own
//  capacity: credit + in flight (sent, not answered) <= capacity. After a
//  repeated hello the worker re-grants its free slots while requests we
//  sent against the old credit may still be on the way to it; they are in
//  in_flight, so this cap keeps the total within what the worker accepts.
static void s_worker_credit(s_broker_t *self, s_worker_t *w, llmq_msg_t *msg)
{
    if (w->leaving || llmq_msg_n(msg) <= 0)
        return;
    int64_t room = w->capacity - w->in_flight;
    int64_t n = llmq_msg_n(msg);
    int64_t credit = n > room - w->credit ? room : w->credit + n;
    w->credit = credit > 0 ? credit : 0;
    s_dispatch_worker(self, w);
}

static void s_handle_worker(s_broker_t *self, llmq_msg_t *msg)
{
    char key[520];
    llmq_msg_type_t type = llmq_msg_type(msg);
    if (self->config.verbose)
        llmq_msg_print(msg);
    s_request_t *r = NULL; //  A result's request, when found on the way
    s_worker_t *w = s_worker_sender(self, msg, key, sizeof(key), &r);
    if (type == LLMQ_MSG_INVALID) {
        self->counters.bad_messages++;
        const char *labels[] = {"reason", "bad_message", NULL};
        llmq_metrics_add(self->metrics, "llmq_broker_dropped_total", labels, 1);
        s_send_error(self, self->backend, llmq_msg_routing_id(msg),
                     LLMQ_ERR_BAD_MESSAGE, llmq_msg_invalid_reason(msg),
                     llmq_msg_id(msg));
    } else if (type == LLMQ_MSG_HELLO)
        s_worker_hello(self, key, msg);
    else if (!w)
        s_send_error(self, self->backend, llmq_msg_routing_id(msg),
                     LLMQ_ERR_BAD_MESSAGE, "hello first", NULL);
    else
        switch (type) {
        case LLMQ_MSG_CREDIT:
            s_worker_credit(self, w, msg);
            break;
        case LLMQ_MSG_HB: {
            bool was_healthy = w->healthy;
            w->healthy = llmq_msg_has(msg, LLMQ_F_healthy)
                             ? llmq_msg_healthy(msg)
                             : true;
            if (w->healthy && !was_healthy) {
                s_log(self, "info", "worker_healthy",
                      LLMQ_LOG_STR("worker", w->name), s_END);
                s_dispatch_worker(self, w);
            } else if (!w->healthy && was_healthy)
                s_log(self, "warning", "worker_unhealthy",
                      LLMQ_LOG_STR("worker", w->name), s_END);
            break;
        }
        case LLMQ_MSG_RES:
        case LLMQ_MSG_CHUNK:
            s_worker_result(self, w, r, &msg);
            break;
        case LLMQ_MSG_HELD:
            s_worker_held(self, w, msg);
            break;
        case LLMQ_MSG_BYE:
            if (!w->leaving) {
                s_log(self, "info", "worker_leave",
                      LLMQ_LOG_STR("worker", w->name), s_END);
                s_worker_retire(self, w);
            }
            if (w->in_flight == 0) {
                s_log(self, "info", "worker_gone",
                      LLMQ_LOG_STR("worker", w->name), s_END);
                s_worker_remove(self, w, "left");
            }
            break;
        case LLMQ_MSG_JOB_STATUS:
        case LLMQ_MSG_JOB_RESULTS:
            if (self->config.module && self->config.module->worker_msg)
                self->config.module->worker_msg(self->module_state, &msg);
            else
                s_send_error(self, self->backend, llmq_msg_routing_id(msg),
                             LLMQ_ERR_BAD_MESSAGE, "no batch jobs were sent",
                             NULL);
            break;
        default:
            s_send_error(self, self->backend, llmq_msg_routing_id(msg),
                         LLMQ_ERR_BAD_MESSAGE,
                         "unexpected message type from a worker",
                         llmq_msg_id(msg));
            break;
        }
    llmq_msg_destroy(&msg);
}

//  Fill the fields a queued request takes from its `req` header, the same
//  for a client's request and one the batch module submits: lane, op,
//  priority, deadline (relative on the wire, absolute here), attempts.
static void s_request_init(s_request_t *r, s_lane_t *lane, int op,
                           const llmq_msg_t *msg, int64_t now)
{
    llmq_queue_node_init(&r->qnode);
    llmq_queue_node_init(&r->dnode);
    r->lane = lane;
    lane->refs++;
    r->op = (uint8_t)op;
    r->priority = llmq_msg_priority(msg);
    r->received_at = now;
    int64_t deadline_ms = llmq_msg_deadline_ms(msg);
    r->deadline = deadline_ms > 0 && deadline_ms < INT64_MAX / 4
                      ? now + deadline_ms
                      : s_NO_EXPIRY;
    int64_t max_attempts =
        llmq_msg_has(msg, LLMQ_F_max_attempts) ? llmq_msg_max_attempts(msg) : 3;
    r->max_attempts = (uint8_t)(max_attempts < 1                ? 1
                                : max_attempts > s_MAX_ATTEMPTS ? s_MAX_ATTEMPTS
                                                                : max_attempts);
    r->attempt = 1;
}

//  --------------------------------------------------------------------------
//  Clients.

//  Tell the worker holding r to drop it (its slot's credit comes back with
//  the worker's `cancelled` answer, which the broker then drops).
static void s_cancel_at_worker(llmq_broker_core_t *self, s_request_t *r)
{
    llmq_msg_t *cancel = llmq_msg_new(LLMQ_MSG_CANCEL);
    if (!cancel)
        return;
    char bid[24];
    s_bid_text(r->bid, bid);
    llmq_msg_set_id(cancel, bid);
    llmq_msg_set_routing_id(cancel, r->worker->rid);
    llmq_msg_send(&cancel, self->backend);
}

//  What a client request carries for delivery under churn (3.3): the
//  default deadline, the resend flag and the chunks the client already has
//  of a resent stream (its request key came with it, s_request_new).
static void s_request_keys(s_broker_t *self, s_request_t *r,
                           const llmq_msg_t *msg, int64_t now)
{
    if (r->deadline == s_NO_EXPIRY && self->config.default_deadline_ms > 0)
        r->deadline = now + self->config.default_deadline_ms;
    r->resend = llmq_msg_resend(msg);
    if (r->stream && r->resend && llmq_msg_has(msg, LLMQ_F_seq) &&
        llmq_msg_seq(msg) >= 0)
        r->chunks = (uint32_t)(llmq_msg_seq(msg) + 1);
}

//  A resent stream the client has chunks of, with no worker to attach it
//  to: never dispatched again (no splicing, PROTOCOL.md 3.3).
static void s_fail_restarted_stream(s_broker_t *self, s_request_t *r)
{
    char message[120];
    snprintf(message, sizeof(message),
             "stream interrupted after %u chunks (broker restarted)",
             r->chunks);
    s_fail(self, r, LLMQ_ERR_PROVIDER_ERROR, message);
}

//  A request the client sent before (3.3): attach it to the worker that
//  holds it, park it while workers may still report it, or fail a stream
//  the client saw chunks of. Returns true if it was taken care of here.
static bool s_client_resend(s_broker_t *self, s_request_t *r, int64_t now)
{
    if (!r->resend)
        return false;
    if (r->rkey && s_attach_resend(self, r))
        return true;
    if (now < self->recovery_end && self->parked) {
        r->park = zlistx_add_end(self->parked, r);
        if (r->park) {
            s_expiry_set(self, r, r->deadline);
            return true;
        }
    }
    if (r->chunks > 0) {
        s_fail_restarted_stream(self, r);
        return true;
    }
    return false;
}

//  What each tenant spent today (UTC), from the cost its results carried
//  (PROTOCOL.md 3.4). Bounded: past s_SPEND_TENANTS tenants a day, new ones
//  are counted under "" (a hostile client declaring names cannot grow it).
#define s_SPEND_TENANTS 10000
typedef struct {
    double usd;
    char name[1]; //  Stored inline (the key in self->spend)
} s_spend_t;

//  The spend map, emptied when the UTC day turns; NULL if out of memory.
static zhashx_t *s_spend_today(s_broker_t *self)
{
    int64_t day = (int64_t)(time(NULL) / 86400);
    if (self->spend && day != self->spend_day)
        zhashx_purge(self->spend);
    self->spend_day = day;
    if (!self->spend) {
        self->spend = zhashx_new();
        if (self->spend) {
            zhashx_set_key_duplicator(self->spend, NULL);
            zhashx_set_key_destructor(self->spend, NULL);
            zhashx_set_destructor(self->spend, s_item_free);
        }
    }
    return self->spend;
}

static double s_spend_of(s_broker_t *self, const char *tenant)
{
    zhashx_t *spend = s_spend_today(self);
    s_spend_t *e = spend ? (s_spend_t *)zhashx_lookup(spend, tenant) : NULL;
    return e ? e->usd : 0;
}

//  A result's cost (already checked: finite, 0..10,000) counts for its
//  request's tenant.
static void s_spend_add(s_broker_t *self, s_request_t *r, double usd)
{
    zhashx_t *spend = s_spend_today(self);
    if (!spend || !(usd > 0) || !r->owner)
        return;
    const char *name = r->owner->name;
    s_spend_t *e = (s_spend_t *)zhashx_lookup(spend, name);
    if (!e && zhashx_size(spend) >= s_SPEND_TENANTS)
        e = (s_spend_t *)zhashx_lookup(spend, name = "");
    if (!e) {
        size_t len = strlen(name);
        e = (s_spend_t *)calloc(1, sizeof(*e) + len);
        if (!e)
            return;
        memcpy(e->name, name, len + 1);
        zhashx_insert(spend, e->name, e);
    }
    e->usd += usd;
}

//  Tenants at or past the daily cap now (a `status` counter).
static int64_t s_spend_capped(s_broker_t *self)
{
    double cap = self->config.tenant_daily_usd;
    zhashx_t *spend = cap > 0 ? s_spend_today(self) : NULL;
    int64_t n = 0;
    for (s_spend_t *e = spend ? (s_spend_t *)zhashx_first(spend) : NULL; e;
         e = (s_spend_t *)zhashx_next(spend))
        n += e->usd >= cap;
    return n;
}

//  Refuse a request of a tenant that reached its daily cap: `rate_limited`,
//  not retryable (retrying before 00:00 UTC cannot help). True if refused.
static bool s_spend_admit(s_broker_t *self, llmq_msg_t **msg_p)
{
    double cap = self->config.tenant_daily_usd;
    double spent = cap > 0 ? s_spend_of(self, s_tenant_of(self, *msg_p)) : 0;
    if (!(cap > 0) || spent < cap)
        return false;
    char why[160];
    snprintf(why, sizeof(why),
             "tenant daily spend cap reached ($%.4f of $%.4f); it resets at "
             "00:00 UTC",
             spent, cap);
    const char *labels[] = {"reason", "tenant_daily_cap", NULL};
    llmq_metrics_add(self->metrics, "llmq_broker_dropped_total", labels, 1);
    s_refuse_as(self, msg_p, LLMQ_ERR_RATE_LIMITED, 0, why);
    return true;
}

//  Refuse a client request past its tenant's caps or the byte budget
//  (answered `overloaded`, retryable). True if it was refused (taken).
static bool s_tenant_admit(s_broker_t *self, llmq_msg_t **msg_p)
{
    size_t bytes = 0;
    llmq_msg_payload_data(*msg_p, &bytes);
    char why[120];
    if (!s_tenant_refuse(self, s_tenant_of(self, *msg_p), bytes, why,
                         sizeof(why)))
        return false;
    self->counters.overloaded++;
    const char *labels[] = {"reason", "tenant_cap", NULL};
    llmq_metrics_add(self->metrics, "llmq_broker_dropped_total", labels, 1);
    s_refuse(self, msg_p, LLMQ_ERR_OVERLOADED, why);
    return true;
}

//  A client request belongs to the tenant of its message; its payload size
//  is what it weighs in the byte caps.
static void s_request_own(s_broker_t *self, s_request_t *r, llmq_msg_t *msg)
{
    r->bytes = r->has_pmsg ? zmq_msg_size(&r->pmsg) : 0;
    r->owner = s_tenant_require(self, s_tenant_of(self, msg));
    if (r->owner)
        r->owner->held++;
}

//  A client is (tenant, routing id): a socket of another tenant that
//  reuses a routing id is another client, and its cancels never reach the
//  first one's requests (PROTOCOL.md 3.4). Appends "~" and a hash of the
//  tenant to the routing id's hex key (the request key stays <= 600).
static void s_key_tenant(s_broker_t *self, llmq_msg_t *msg, char *key,
                         size_t size)
{
    const char *tenant = s_tenant_of(self, msg);
    if (!*tenant)
        return;
    size_t len = strlen(key);
    snprintf(key + len, size - len, "~%016" PRIx64, s_tenant_fnv(tenant));
}

//  True if tenant is the configured admin (sees every batch).
static bool s_tenant_is_admin(s_broker_t *self, const char *tenant)
{
    const char *admin =
        self->auth ? self->config.admin_key : self->config.admin_tenant;
    return admin && *admin && streq(admin, tenant);
}

//  A batch message goes to the module with its sender's tenant in
//  `tenant`, the owner it checks; none for the admin, who sees every batch.
static void s_batch_tenant(s_broker_t *self, llmq_msg_t *msg)
{
    const char *tenant = s_tenant_of(self, msg);
    llmq_msg_set_tenant(msg, s_tenant_is_admin(self, tenant) ? NULL : tenant);
}

//  --------------------------------------------------------------------------
//  Routing (PROTOCOL.md 3.6): the table is llmq_route's; here, what it
//  needs of the broker: which targets can answer, a request's lane, and
//  moving a request along its chain. Nothing here runs without --routes.

#define s_ROUTE_NO_WORKER 1 //  Why a target cannot answer (metric reason)
#define s_ROUTE_UNHEALTHY 2
#define s_ROUTE_ERROR 3 //  Its worker answered a retryable error

//  Can the lane answer now? 0, or why not: no live worker (none, or all
//  silent or leaving), or only unhealthy ones (their breaker is open).
static int s_lane_state(s_lane_t *lane)
{
    int why = s_ROUTE_NO_WORKER;
    s_worker_t *w = (s_worker_t *)zlistx_first(lane->workers);
    for (; w; w = (s_worker_t *)zlistx_next(lane->workers)) {
        if (w->leaving || w->silent)
            continue;
        if (w->healthy)
            return 0;
        why = s_ROUTE_UNHEALTHY;
    }
    return why;
}

static int s_route_usable(const char *model, const char *pool, void *arg)
{
    s_lane_t *lane = s_lane_require((s_broker_t *)arg, model, pool);
    return lane ? s_lane_state(lane) : s_ROUTE_NO_WORKER;
}

//  Count a request moved along route's chain, for why.
static void s_route_count(s_broker_t *self, const char *route, int why)
{
    static const char *reasons[] = {"no_worker", "no_worker", "unhealthy",
                                    "error"};
    self->counters.fallbacks++;
    const char *labels[] = {"route", s_metric_model(self, route), "reason",
                            reasons[why >= 0 && why <= 3 ? why : 0], NULL};
    llmq_metrics_add(self->metrics, "llmq_broker_fallbacks_total", labels, 1);
}

//  The lane of a new request: its route's pick when its model is a route
//  (*step: the chain step), else its own model and pool (*step -1).
static s_lane_t *s_route_lane(s_broker_t *self, llmq_msg_t *msg, int *step)
{
    const char *model = llmq_msg_model(msg);
    llmq_route_target_t t;
    if (llmq_route_pick(self->route, model, llmq_msg_pool(msg), 0,
                        s_route_usable, self, true, &t) < 0)
        return s_lane_require(self, model, llmq_msg_pool(msg));
    *step = t.step;
    if (t.step > 0 && t.why) //  Not when step 0 only lacks the pool
        s_route_count(self, model, t.why);
    return s_lane_require(self, t.model, t.pool);
}

//  The lane of a client's request: its model and pool, or a route's pick.
static inline s_lane_t *s_request_lane(s_broker_t *self, llmq_msg_t *msg,
                                       int *step)
{
    if (self->route)
        return s_route_lane(self, msg, step);
    return s_lane_require(self, llmq_msg_model(msg), llmq_msg_pool(msg));
}

//  Remember what a routed request asked for: "model\0pool\0".
static void s_route_keep(s_request_t *r, llmq_msg_t *msg, int step)
{
    const char *model = llmq_msg_model(msg);
    const char *pool = llmq_msg_pool(msg) ? llmq_msg_pool(msg) : "";
    size_t m = strlen(model) + 1, p = strlen(pool) + 1;
    r->routed = (char *)malloc(m + p);
    if (!r->routed)
        return; //  Then it simply has no fallback
    memcpy(r->routed, model, m);
    memcpy(r->routed + m, pool, p);
    r->route_step = (uint8_t)step;
}

static const char *s_routed_pool(s_request_t *r)
{
    return r->routed + strlen(r->routed) + 1;
}

//  The next step of r's chain that can answer, into *t: 0, or -1 if none.
static int s_route_next(s_broker_t *self, s_request_t *r,
                        llmq_route_target_t *t)
{
    return llmq_route_pick(self->route, r->routed, s_routed_pool(r),
                           r->route_step + 1, s_route_usable, self, false,
                           t) == 0
               ? 0
               : -1;
}

//  Move a routed request (waiting in its lane, or just taken back from its
//  worker) to the front of target t's lane, and dispatch.
static void s_route_move(s_broker_t *self, s_request_t *r,
                         const llmq_route_target_t *t, int why)
{
    s_lane_t *to = s_lane_require(self, t->model, t->pool);
    if (!to) {
        s_fail(self, r, LLMQ_ERR_INTERNAL, "broker out of memory");
        return;
    }
    if (llmq_queue_node_queued(&r->qnode)) {
        llmq_queue_remove(r->lane->queue, &r->qnode);
        s_dequeued(self, r, false);
    }
    s_route_count(self, r->routed, why);
    if (self->config.verbose)
        s_log(self, "info", "route_fallback", LLMQ_LOG_STR("id", r->id),
              LLMQ_LOG_STR("from", r->lane->model),
              LLMQ_LOG_STR("to", to->model), s_END);
    if (--r->lane->refs == 0)
        r->lane->idle_since = zclock_mono();
    r->lane = to;
    to->refs++;
    r->route_step = (uint8_t)t->step;
    r->resend = false; //  A fresh run of another model, nothing to attach
    if (s_enqueue(self, r, true))
        s_fail(self, r, LLMQ_ERR_INTERNAL,
               "broker could not queue the request");
    else
        s_dispatch_lane(self, to);
}

//  A routed request's worker answered a retryable error (after its own
//  retries): the next step of its chain that can answer gets it instead
//  of the client getting the error. Returns true if it moved (the answer
//  is destroyed). A stream the client saw chunks of is never moved.
static bool s_route_retry(s_broker_t *self, s_request_t *r, llmq_msg_t **res)
{
    llmq_route_target_t t;
    if (llmq_msg_ok(*res) || r->chunks || !r->client)
        return false;
    const char *code = llmq_msg_error_code(*res);
    bool retryable = llmq_msg_has(*res, LLMQ_F_error_retryable)
                         ? llmq_msg_error_retryable(*res)
                         : llmq_err_retryable(llmq_err_from_name(code));
    if (!retryable || s_route_next(self, r, &t))
        return false;
    s_request_unassign(self, r);
    if (r->attempt < 255)
        r->attempt++;
    llmq_msg_destroy(res);
    s_route_move(self, r, &t, s_ROUTE_ERROR);
    return true;
}

//  Routed requests waiting in a lane that cannot answer move to the next
//  step of their chain that can. Requests of one route and step mostly
//  come together: one that found no step spares the same search to the
//  next ones like it.
static void s_route_sweep_lane(s_broker_t *self, s_lane_t *lane, int why)
{
    size_t n = llmq_queue_size(lane->queue), m = 0;
    s_request_t **move = (s_request_t **)malloc(n * sizeof(*move));
    for (size_t i = 0; move && i < n; i++) {
        s_request_t *r =
            LLMQ_QUEUE_ITEM(llmq_queue_at(lane->queue, i), s_request_t, qnode);
        if (r->routed)
            move[m++] = r;
    }
    s_request_t *stuck = NULL; //  Last one with nowhere to go
    for (size_t i = 0; i < m; i++) {
        s_request_t *r = move[i];
        llmq_route_target_t t;
        if (stuck && stuck->route_step == r->route_step &&
            streq(stuck->routed, r->routed) &&
            streq(s_routed_pool(stuck), s_routed_pool(r)))
            continue;
        if (s_route_next(self, r, &t))
            stuck = r;
        else
            s_route_move(self, r, &t, why);
    }
    free(move);
}

//  Every tick: the lanes with requests waiting that cannot answer (and
//  where a routed request may wait: a plain model's backlog waiting for
//  its workers is not walked).
static void s_route_sweep(s_broker_t *self)
{
    zlistx_t *lanes = NULL;
    s_lane_t *lane = (s_lane_t *)zhashx_first(self->lanes);
    for (; lane; lane = (s_lane_t *)zhashx_next(self->lanes))
        if (llmq_queue_size(lane->queue) && s_lane_state(lane) &&
            llmq_route_targeted(self->route, lane->model) &&
            (lanes || (lanes = zlistx_new())))
            zlistx_add_end(lanes, lane);
    //  Apart from the walk: a move may add lanes to the table.
    lane = lanes ? (s_lane_t *)zlistx_first(lanes) : NULL;
    for (; lane; lane = (s_lane_t *)zlistx_next(lanes))
        s_route_sweep_lane(self, lane, s_lane_state(lane));
    zlistx_destroy(&lanes);
}

//  Read the routes file at start: a bad one stops the broker.
static void s_route_start(s_broker_t *self)
{
    char err[600];
    self->route = llmq_route_new();
    if (!self->route)
        self->error = strdup("out of memory");
    else if (llmq_route_load(self->route, self->config.routes, err,
                             sizeof(err)))
        self->error = strdup(err);
    else
        s_log(self, "info", "routes_loaded",
              LLMQ_LOG_STR("file", self->config.routes),
              LLMQ_LOG_INT("routes", (int64_t)llmq_route_count(self->route)),
              s_END);
}

//  SIGHUP (the pipe's ROUTES): read the file again; a bad one keeps the
//  routes we have.
static void s_route_reload(s_broker_t *self)
{
    char err[600];
    if (!self->route) {
        s_log(self, "warning", "routes_reload_failed",
              LLMQ_LOG_STR("error", "no routes file (--routes)"), s_END);
        return;
    }
    if (llmq_route_load(self->route, self->config.routes, err, sizeof(err)))
        s_log(self, "error", "routes_reload_failed", LLMQ_LOG_STR("error", err),
              LLMQ_LOG_STR("effect", "the routes loaded before stay"), s_END);
    else
        s_log(self, "info", "routes_loaded",
              LLMQ_LOG_STR("file", self->config.routes),
              LLMQ_LOG_INT("routes", (int64_t)llmq_route_count(self->route)),
              s_END);
}

//  Every tick: moves along chains; a routes file that changed is read
//  again (as on SIGHUP).
static void s_route_tick(s_broker_t *self, int64_t now)
{
    s_route_sweep(self);
    if (llmq_route_changed(self->route, self->config.routes, now))
        s_route_reload(self);
}

//  client: the entry of key (s_client_seen looked it up), or NULL.
//  The op of a client's request (an index of s_ops), or -1 after refusing
//  it as invalid.
static int s_request_op(s_broker_t *self, llmq_msg_t **msg_p)
{
    for (int i = 0; i < 3; i++)
        if (streq(llmq_msg_op(*msg_p), s_ops[i]))
            return i;
    s_refuse(self, msg_p, LLMQ_ERR_INVALID_REQUEST,
             "unknown op (expected chat, completion or embedding)");
    return -1;
}

//  True (the request refused as overloaded) when the queues are full.
static bool s_queue_full(s_broker_t *self, llmq_msg_t **msg_p)
{
    if (self->queued < self->config.max_queue)
        return false;
    self->counters.overloaded++;
    if (!self->overloaded) {
        self->overloaded = true;
        s_log(self, "warning", "overload_start",
              LLMQ_LOG_INT("queued", self->queued), s_END);
    }
    char message[96];
    snprintf(message, sizeof(message),
             "broker queue full (%zu requests waiting)", self->queued);
    s_refuse(self, msg_p, LLMQ_ERR_OVERLOADED, message);
    return true;
}

//  True (the request refused as invalid) when its model, after routing,
//  cannot take it (3.8); an unknown model costs one lookup.
static bool s_model_refuses(s_broker_t *self, s_lane_t *lane,
                            llmq_msg_t **msg_p)
{
    //  An unknown model passes the check: one lookup per lane, not per
    //  request, until the models learn something.
    if (lane->models_gen != self->models_gen) {
        lane->models_gen = self->models_gen;
        lane->unknown_model = !llmq_models_lookup(self->models, lane->model);
    }
    if (lane->unknown_model)
        return false;
    llmq_msg_t *msg = *msg_p;
    size_t size = 0;
    const void *body = llmq_msg_payload_data(msg, &size);
    char why[400];
    if (!llmq_models_check(self->models, lane->model, llmq_msg_op(msg),
                           llmq_msg_stream(msg), body, size, why, sizeof(why)))
        return false;
    s_refuse(self, msg_p, LLMQ_ERR_INVALID_REQUEST, why);
    return true;
}

static void s_client_request(s_broker_t *self, const char *key,
                             const s_client_id_t *cid, s_client_t *client,
                             llmq_msg_t **msg_p, int64_t now)
{
    llmq_msg_t *msg = *msg_p;
    const char *id = llmq_msg_id(msg);
    if (s_pending_find(self, client, id)) {
        //  A resend of a request still pending: the first one will answer.
        self->counters.duplicates++;
        const char *labels[] = {"reason", "duplicate_request", NULL};
        llmq_metrics_add(self->metrics, "llmq_broker_dropped_total", labels, 1);
        llmq_msg_destroy(msg_p);
        return;
    }
    if (self->draining) {
        self->counters.overloaded++;
        s_refuse(self, msg_p, LLMQ_ERR_OVERLOADED, "broker shutting down");
        return;
    }
    int op = s_request_op(self, msg_p);
    if (op < 0 || s_queue_full(self, msg_p) || s_tenant_admit(self, msg_p) ||
        s_spend_admit(self, msg_p))
        return;
    int step = -1; //  Its step in a route's chain (3.6), -1: not routed
    s_lane_t *lane = s_request_lane(self, msg, &step);
    if (lane && s_model_refuses(self, lane, msg_p))
        return;
    if (!client)
        client = s_client_require(self, key, llmq_msg_routing_id(msg), cid);
    s_request_t *r = client ? s_request_new(self, client->key, id) : NULL;
    if (!lane || !client || !r) {
        s_request_free(self, r);
        s_refuse(self, msg_p, LLMQ_ERR_INTERNAL, "broker out of memory");
        return;
    }
    r->client = client;
    s_request_init(r, lane, op, msg, now);
    if (step >= 0)
        s_route_keep(r, msg, step);
    r->stream = llmq_msg_stream(msg);
    s_payload_take(r, msg);
    size_t meta_size = 0;
    const uint8_t *meta = llmq_msg_meta(msg, &meta_size);
    if (meta && (r->meta = (uint8_t *)malloc(meta_size))) {
        memcpy(r->meta, meta, meta_size);
        r->meta_size = meta_size;
    }
    r->trace = s_strdup_or_null(llmq_msg_trace(msg));
    r->tenant = s_strdup_or_null(llmq_msg_tenant(msg));
    s_request_own(self, r, msg);
    s_request_keys(self, r, msg, now);
    s_pending_add(self, r);
    self->counters.received++;
    //  Only a request that must wait in a long queue pays for a copy of its
    //  payload: in a short one the pinned receive buffers cost little.
    if (self->queued >= s_COMPACT_ABOVE &&
        (llmq_queue_size(lane->queue) || !s_best_worker(lane)))
        s_payload_compact(r);
    llmq_metrics_series_add(self->m_received, 1);
    if (s_client_resend(self, r, now)) {
        llmq_msg_destroy(msg_p);
        return;
    }
    if (self->cache && s_cache_admit(self, r, msg)) {
        llmq_msg_destroy(msg_p);
        return;
    }
    if (s_enqueue(self, r, false)) {
        s_fail(self, r, LLMQ_ERR_INTERNAL,
               "broker could not queue the request");
        llmq_msg_destroy(msg_p);
        return;
    }
    llmq_msg_destroy(msg_p);
    s_dispatch_lane(self, lane);
}

static void s_client_cancel(s_broker_t *self, s_client_t *client,
                            llmq_msg_t *msg)
{
    s_request_t *r = s_pending_find(self, client, llmq_msg_id(msg));
    if (!r)
        return; //  Unknown or already answered: ignored
    if (r->worker)
        s_cancel_at_worker(self, r);
    self->counters.cancelled++;
    s_fail(self, r, LLMQ_ERR_CANCELLED, "cancelled by the client");
}

//  The status payload (PROTOCOL.md 5.3) of a live worker and of a lane.
static void s_status_worker(llmq_status_worker_t *out, s_worker_t *w)
{
    *out = (llmq_status_worker_t){
        .name = w->name,
        .pool = w->pool,
        .provider = w->provider,
        .models = (const char **)w->models,
        .nmodels = w->nmodels,
        .capacity = w->capacity,
        .credit = w->credit,
        .in_flight = w->in_flight,
        .healthy = w->healthy && !w->leaving,
        .limit_group = w->group ? w->group->name : NULL,
        .answered = (int64_t)w->answered,
        //  Its share of the limit group (0 = none sent, unlimited).
        .limits_rpm = w->share_rpm,
        .limits_tpm = w->share_tpm};
}

static void s_status_queue(llmq_status_queue_t *out, s_lane_t *lane)
{
    *out =
        (llmq_status_queue_t){.model = lane->model,
                              .pool = lane->pool,
                              .depth = (int64_t)llmq_queue_size(lane->queue),
                              .workers = (int64_t)zlistx_size(lane->workers)};
}

static void s_client_status(s_broker_t *self, zframe_t *rid)
{
    //  Clients choose model names: list at most s_MAX_STATUS_QUEUES lanes,
    //  so the reply stays small whatever they send.
    size_t lanes = zhashx_size(self->lanes);
    if (lanes > s_MAX_STATUS_QUEUES)
        lanes = s_MAX_STATUS_QUEUES;
    s_counters_t *c = &self->counters;
    llmq_cache_stats_t cs;
    llmq_cache_stats(self->cache, &cs);
    llmq_status_counter_t counters[] = {
        {"received", c->received},
        {"dispatched", c->dispatched},
        {"answered_ok", c->answered_ok},
        {"answered_error", c->answered_error},
        {"requeued", c->requeued},
        {"dropped", c->dropped},
        {"expired", c->expired},
        {"overloaded", c->overloaded},
        {"not_found", c->not_found},
        {"cancelled", c->cancelled},
        {"queued", self->queued},
        {"in_flight", self->inflight_count},
        {"tenants", self->tenants_waiting},
        {"tenants_at_daily_cap", s_spend_capped(self)},
        {"bad_usage", c->bad_usage},
        {"client_gone", c->client_gone},
        {"cache_hits", cs.hits},
        {"cache_misses", cs.misses},
        {"cache_waits", cs.waits},
        {"cache_stored", cs.stored},
        {"cache_evictions", cs.evictions},
        {"cache_expired", cs.expired},
        {"cache_entries", cs.entries},
        {"cache_bytes", cs.bytes},
        {"routes", self->route ? llmq_route_count(self->route) : 0},
        {"fallbacks", c->fallbacks},
    };
    llmq_status_t st = {
        .broker = self->name,
        .version = s_VERSION,
        .uptime_ms = zclock_mono() - self->started_at,
        .workers = (llmq_status_worker_t *)calloc(
            zhashx_size(self->workers) + 1, sizeof(llmq_status_worker_t)),
        .queues = (llmq_status_queue_t *)calloc(lanes + 1,
                                                sizeof(llmq_status_queue_t)),
        .counters = counters,
        .ncounters = sizeof(counters) / sizeof(counters[0])};
    zframe_t *payload = NULL;
    if (st.workers && st.queues) {
        s_worker_t *w = (s_worker_t *)zhashx_first(self->workers);
        for (; w; w = (s_worker_t *)zhashx_next(self->workers))
            s_status_worker(&st.workers[st.nworkers++], w);
        s_lane_t *lane = (s_lane_t *)zhashx_first(self->lanes);
        for (; lane && st.nqueues < lanes;
             lane = (s_lane_t *)zhashx_next(self->lanes))
            s_status_queue(&st.queues[st.nqueues++], lane);
        payload = llmq_status_encode(&st);
    }
    free(st.workers);
    free(st.queues);
    if (!payload)
        return;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_STATUS);
    if (!msg) {
        zframe_destroy(&payload);
        return;
    }
    llmq_msg_set_payload(msg, &payload);
    llmq_msg_set_routing_id(msg, rid);
    llmq_msg_send(&msg, self->frontend);
}

//  --------------------------------------------------------------------------
//  Response cache (PROTOCOL.md 3.7): the broker's side of llmq_cache.c. A
//  cacheable request is answered from the cache, or waits for an identical
//  one in flight (a waiter: in its client's pending table and the expiry
//  heap, neither queued nor at a worker), or leads a new flight.

static void s_cache_open(s_broker_t *self, const llmq_broker_config_t *config)
{
    char err[512];
    self->cache = llmq_cache_new(config->cache_path, config->cache_max_bytes,
                                 config->cache_ttl_ms, err, sizeof(err));
    if (!self->cache)
        self->error = strdup(err);
    else {
        llmq_cache_stats_t st;
        llmq_cache_stats(self->cache, &st);
        s_log(self, "info", "cache_open",
              LLMQ_LOG_STR("file", config->cache_path),
              LLMQ_LOG_INT("entries", st.entries),
              LLMQ_LOG_INT("bytes", st.bytes), s_END);
    }
}

//  Before the requests are destroyed: waiters go, leaders forget their
//  flights (no waiter is queued in a leader's place at the end).
static void s_cache_close(s_broker_t *self)
{
    llmq_cache_flight_t *f;
    while (self->cache && (f = llmq_cache_flight_first(self->cache))) {
        s_request_t *r = (s_request_t *)llmq_cache_flight_leader(f);
        if (r)
            r->flight = NULL;
        while ((r = (s_request_t *)llmq_cache_flight_pop(f))) {
            r->flight = NULL;
            r->fwait = NULL;
            s_request_destroy(self, &r);
        }
        llmq_cache_flight_end(self->cache, &f);
    }
}

//  The bytes of a request's payload, wherever they are now.
static const void *s_payload_data(s_request_t *r, size_t *size)
{
    if (r->has_pmsg) {
        *size = zmq_msg_size(&r->pmsg);
        return zmq_msg_data(&r->pmsg);
    }
    *size = r->shared ? r->shared->size : 0;
    return r->shared ? r->shared->data : NULL;
}

//  Cacheable: not a stream, and `cache` true, or absent with temperature 0.
static bool s_cacheable(s_request_t *r, const llmq_msg_t *msg, const void *body,
                        size_t size)
{
    if (r->stream)
        return false;
    if (llmq_msg_has(msg, LLMQ_F_cache))
        return llmq_msg_cache(msg);
    double t = 1;
    return llmq_body_temperature(body, size, &t) == 1 && t == 0;
}

//  The `res` of an answer no worker was asked for: cached, cost 0.
static llmq_msg_t *s_cache_res(const void *body, size_t size,
                               const llmq_cache_usage_t *u)
{
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    if (!res)
        return NULL;
    llmq_msg_set_ok(res, true);
    llmq_msg_set_payload_mem(res, body, size);
    llmq_msg_set_usage_prompt_tokens(res, u->prompt_tokens);
    llmq_msg_set_usage_completion_tokens(res, u->completion_tokens);
    llmq_msg_set_usage_total_tokens(res, u->total_tokens);
    llmq_msg_set_usage_cost_usd(res, 0);
    llmq_msg_set_cached(res, true);
    return res;
}

//  At admission: answer r from the cache, or make it wait for its flight
//  (true: taken care of), or make it lead a new flight (false: queue it).
static bool s_cache_admit(s_broker_t *self, s_request_t *r, llmq_msg_t *msg)
{
    size_t size = 0;
    const void *body = s_payload_data(r, &size);
    if (!body || !s_cacheable(r, msg, body, size))
        return false;
    llmq_cache_key_t key;
    llmq_cache_key(
        self->cache, &key, s_ops[r->op], r->lane->model, r->lane->pool,
        self->config.cache_per_tenant ? s_tenant_of(self, msg) : NULL, body,
        size);
    void *data = NULL;
    llmq_cache_usage_t u;
    if (llmq_cache_get(self->cache, &key, &data, &size, &u) == 0) {
        llmq_msg_t *res = s_cache_res(data, size, &u);
        free(data);
        if (res) {
            r->attempt = 0;
            s_complete(self, r, &res);
            return true;
        }
    }
    llmq_cache_flight_t *f = llmq_cache_flight_find(self->cache, &key);
    if (f && (r->fwait = llmq_cache_flight_join(f, r))) {
        r->flight = f;
        llmq_cache_count(self->cache, "wait");
        s_expiry_set(self, r, r->deadline);
        return true;
    }
    if (!f)
        r->flight = llmq_cache_flight_start(self->cache, &key, r);
    llmq_cache_count(self->cache, "miss");
    return false;
}

//  An error the same body would get again: its waiters share it.
static bool s_cache_shared_error(llmq_msg_t *res)
{
    llmq_err_t code = llmq_err_from_name(llmq_msg_error_code(res));
    return code == LLMQ_ERR_INVALID_REQUEST || code == LLMQ_ERR_AUTH ||
           code == LLMQ_ERR_CONTEXT_LENGTH || code == LLMQ_ERR_CONTENT_FILTER ||
           code == LLMQ_ERR_NOT_FOUND;
}

//  Store a worker's ok answer of r's flight.
static void s_cache_store(s_broker_t *self, llmq_cache_flight_t *f,
                          llmq_msg_t *res)
{
    zframe_t *payload = llmq_msg_payload(res);
    llmq_cache_usage_t u = {.prompt_tokens = llmq_msg_usage_prompt_tokens(res),
                            .completion_tokens =
                                llmq_msg_usage_completion_tokens(res),
                            .total_tokens = llmq_msg_usage_total_tokens(res),
                            .cost_usd = llmq_msg_usage_cost_usd(res)};
    llmq_cache_put(self->cache, llmq_cache_flight_key(f),
                   payload ? zframe_data(payload) : NULL,
                   payload ? zframe_size(payload) : 0, &u);
}

//  The leader of a flight has its answer (s_complete, before it is sent):
//  store an ok one and answer every waiter with it; give them an error the
//  same body would get again. Any other error leaves the flight to
//  s_cache_release, which queues a waiter in the leader's place.
static void s_cache_result(s_broker_t *self, s_request_t *r, llmq_msg_t *res)
{
    bool ok = llmq_msg_ok(res);
    if (r->fwait || (!ok && !s_cache_shared_error(res)))
        return;
    llmq_cache_flight_t *f = r->flight;
    r->flight = NULL;
    if (ok && r->worker)
        s_cache_store(self, f, res);
    s_request_t *w;
    while ((w = (s_request_t *)llmq_cache_flight_pop(f))) {
        w->flight = NULL;
        w->fwait = NULL;
        w->attempt = 0;
        llmq_msg_t *copy = llmq_msg_dup(res);
        if (!copy) {
            s_fail(self, w, LLMQ_ERR_INTERNAL, "broker out of memory");
            continue;
        }
        llmq_msg_clear(copy, LLMQ_F_worker);
        llmq_msg_clear(copy, LLMQ_F_attempts);
        if (ok) {
            llmq_msg_set_cached(copy, true);
            llmq_msg_set_usage_cost_usd(copy, 0);
            llmq_cache_count(self->cache, "hit");
        }
        s_complete(self, w, &copy);
    }
    llmq_cache_flight_end(self->cache, &f);
}

//  r is destroyed (s_request_destroy): a waiter leaves its flight; a leader
//  without a shared answer leaves its flight orphaned, and s_cache_promote
//  (from the timers, not from inside a destroy) queues a waiter instead.
static void s_cache_release(s_broker_t *self, s_request_t *r)
{
    llmq_cache_flight_t *f = r->flight;
    r->flight = NULL;
    if (r->fwait) {
        llmq_cache_flight_leave(f, r->fwait);
        r->fwait = NULL;
    } else
        llmq_cache_flight_orphan(self->cache, f);
}

static void s_cache_promote(s_broker_t *self)
{
    llmq_cache_flush(self->cache);
    llmq_cache_flight_t *f;
    while ((f = llmq_cache_orphan(self->cache))) {
        s_request_t *next = (s_request_t *)llmq_cache_flight_pop(f);
        if (!next) {
            llmq_cache_flight_end(self->cache, &f);
            continue;
        }
        next->fwait = NULL;
        llmq_cache_flight_lead(f, next);
        if (s_enqueue(self, next, false)) {
            s_fail(self, next, LLMQ_ERR_INTERNAL,
                   "broker could not queue the request");
            continue;
        }
        s_dispatch_lane(self, next->lane);
    }
}

//  --------------------------------------------------------------------------
//  Work dies with its client (PROTOCOL.md 3.5): a heartbeating client that
//  falls silent has gone, and what it asked for is dropped; replies to a
//  client that does not read are bounded.

//  A reply handed to libzmq, released when libzmq has written or dropped it.
struct s_sent_s {
    s_outbox_t *box; //  Its client's outbox (one reference)
    zmq_msg_t last;  //  The last frame, whose bytes libzmq sends
    size_t size;     //  Bytes counted in box
    s_sent_t *next;  //  In its outbox's returned or spare list
};

#define s_SENT_SPARE 64 //  Records an outbox keeps for reuse, at most

static void s_sent_list_free(s_sent_t *sent)
{
    while (sent) {
        s_sent_t *next = sent->next;
        free(sent);
        sent = next;
    }
}

//  Drop one reference to an outbox (the table's, or a message's).
static void s_outbox_release(void *data, void *hint)
{
    (void)data;
    s_outbox_t *box = (s_outbox_t *)hint;
    if (atomic_fetch_sub(&box->refs, 1) == 1) {
        s_sent_list_free(atomic_load(&box->returned));
        s_sent_list_free(box->spare);
        free(box);
    }
}

//  A record for a reply to this outbox: a spare one, or the ones libzmq
//  gave back (beyond s_SENT_SPARE freed), or a new one. NULL if out of
//  memory. Broker thread only.
static s_sent_t *s_sent_new(s_outbox_t *box)
{
    if (!box->spare) {
        s_sent_t *list = atomic_exchange(&box->returned, NULL);
        for (int kept = 0; list && kept < s_SENT_SPARE; kept++) {
            s_sent_t *next = list->next;
            list->next = box->spare;
            box->spare = list;
            list = next;
        }
        s_sent_list_free(list);
    }
    s_sent_t *sent = box->spare;
    if (sent)
        box->spare = sent->next;
    else
        sent = (s_sent_t *)malloc(sizeof(s_sent_t));
    return sent;
}

static void s_outbox_free(void **item)
{
    if (*item)
        s_outbox_release(NULL, *item);
    *item = NULL;
}

//  The outbox of a client, made on first use. NULL if out of memory.
static s_outbox_t *s_outbox_require(s_broker_t *self, const char *key)
{
    if (!self->outboxes) {
        self->outboxes = zhashx_new();
        if (!self->outboxes)
            return NULL;
        zhashx_set_destructor(self->outboxes, s_outbox_free);
    }
    s_outbox_t *box = (s_outbox_t *)zhashx_lookup(self->outboxes, key);
    if (box)
        return box;
    box = (s_outbox_t *)calloc(1, sizeof(s_outbox_t));
    if (!box)
        return NULL;
    atomic_init(&box->refs, 1);
    atomic_init(&box->returned, NULL);
    zhashx_insert(self->outboxes, key, box);
    return box;
}

//  Timer: forget outboxes with nothing left unwritten (only the table
//  holds them) and no recent heartbeat.
static void s_outboxes_sweep(s_broker_t *self, int64_t now)
{
    if (!self->outboxes)
        return;
    zlistx_t *empty = NULL; //  Copies of their keys
    s_outbox_t *box = (s_outbox_t *)zhashx_first(self->outboxes);
    for (; box; box = (s_outbox_t *)zhashx_next(self->outboxes)) {
        if (atomic_load(&box->refs) != 1 ||
            (box->heartbeat_at &&
             now - box->heartbeat_at <= self->config.client_timeout_ms))
            continue;
        if (!empty && (empty = zlistx_new()) != NULL) {
            zlistx_set_duplicator(empty, (zlistx_duplicator_fn *)strdup);
            zlistx_set_destructor(empty, (zlistx_destructor_fn *)zstr_free);
        }
        if (empty)
            zlistx_add_end(empty, (void *)zhashx_cursor(self->outboxes));
    }
    const char *key = empty ? (const char *)zlistx_first(empty) : NULL;
    for (; key; key = (const char *)zlistx_next(empty))
        zhashx_delete(self->outboxes, key);
    zlistx_destroy(&empty);
}

//  libzmq's free function for a reply's last frame (its I/O thread).
static void s_sent_release(void *data, void *hint)
{
    (void)data;
    s_sent_t *sent = (s_sent_t *)hint;
    s_outbox_t *box = sent->box;
    atomic_fetch_sub(&box->bytes, sent->size);
    atomic_fetch_sub(&box->msgs, 1);
    zmq_msg_close(&sent->last);
    //  Given back before the reference goes: the last one frees the lists.
    sent->next = atomic_load_explicit(&box->returned, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&box->returned, &sent->next,
                                                  sent, memory_order_release,
                                                  memory_order_relaxed))
        ;
    s_outbox_release(NULL, box);
}

//  Replies a client may have queued at once (0 in the config: the old
//  deep buffer).
static int s_client_hwm(s_broker_t *self)
{
    size_t hwm = self->config.client_hwm;
    return hwm > 0 && hwm <= 10000000 ? (int)hwm : 1000000;
}

//  Would one more reply of size bytes pass a client's bounds? One reply
//  always passes an empty outbox, so no reply is too big to ever go.
static bool s_outbox_full(s_broker_t *self, s_client_t *client, s_outbox_t *box,
                          size_t size)
{
    size_t bytes = atomic_load(&box->bytes);
    int msgs = atomic_load(&box->msgs);
    size_t max = self->config.client_max_bytes;
    if (box->slow && msgs < s_client_hwm(self) / 2 &&
        (!max || bytes < max / 2)) {
        box->slow = false;
        s_log(self, "info", "client_slow_end",
              LLMQ_LOG_STR("client", client->key), s_END);
    }
    return msgs > 0 &&
           (msgs >= s_client_hwm(self) || (max && bytes + size > max));
}

//  A reply dropped because its client does not read: count, log once.
static void s_client_slow(s_broker_t *self, s_client_t *client, s_outbox_t *box)
{
    self->counters.dropped++;
    const char *labels[] = {"reason", "client_slow", NULL};
    llmq_metrics_add(self->metrics, "llmq_broker_dropped_total", labels, 1);
    if (box->slow)
        return;
    box->slow = true;
    s_log(self, "warning", "client_slow", LLMQ_LOG_STR("client", client->key),
          LLMQ_LOG_INT("queued_replies", atomic_load(&box->msgs)),
          LLMQ_LOG_INT("queued_bytes", atomic_load(&box->bytes)), s_END);
}

//  Send the last frame of a reply, counted in the outbox until libzmq is
//  done with it. Takes the frame (moved, not copied).
static void s_outbox_send(s_broker_t *self, s_outbox_t *box, zmq_msg_t *last,
                          size_t size)
{
    void *sock = zsock_resolve(self->frontend);
    s_sent_t *sent = zmq_msg_size(last) ? s_sent_new(box) : NULL;
    if (!sent) {
        if (zmq_msg_send(last, sock, 0) == -1)
            zmq_msg_close(last);
        return;
    }
    *sent = (s_sent_t){.box = box, .size = size};
    //  Moved first: a small message keeps its bytes inside the zmq_msg_t.
    zmq_msg_init(&sent->last);
    zmq_msg_move(&sent->last, last);
    atomic_fetch_add(&box->refs, 1);
    atomic_fetch_add(&box->bytes, size);
    atomic_fetch_add(&box->msgs, 1);
    zmq_msg_t msg;
    if (zmq_msg_init_data(&msg, zmq_msg_data(&sent->last),
                          zmq_msg_size(&sent->last), s_sent_release, sent)) {
        s_sent_release(NULL, sent);
        return;
    }
    if (zmq_msg_send(&msg, sock, 0) == -1)
        zmq_msg_close(&msg); //  Calls s_sent_release
}

//  Send a `res` or `chunk` (routing id set) to its client, or drop it if the
//  client's queued replies are past their bounds. Takes the message.
static void s_client_send(s_broker_t *self, s_client_t *client,
                          llmq_msg_t **msg_p)
{
    llmq_msg_t *msg = *msg_p;
    *msg_p = NULL;
    zmq_msg_t payload;
    bool has_payload = llmq_msg_take_payload_msg(msg, &payload) == 0;
    //  The client keeps a reference: one table lookup per client, not per
    //  reply (the outbox outlives the entry, so the lookup finds it again).
    if (!client->box && (client->box = s_outbox_require(self, client->key)))
        atomic_fetch_add(&client->box->refs, 1);
    s_outbox_t *box = client->box;
    char reason[160] = "";
    zmq_msg_t header;
    bool encoded =
        llmq_msg_encode_msg(msg, &header, reason, sizeof(reason)) == 0;
    size_t size = (encoded ? zmq_msg_size(&header) : 0) +
                  (has_payload ? zmq_msg_size(&payload) : 0);
    if (!encoded)
        s_log(self, "warning", "msg_send_failed",
              LLMQ_LOG_STR("type", llmq_msg_type_name(llmq_msg_type(msg))),
              LLMQ_LOG_STR("reason", reason), s_END);
    else if (!box)
        llmq_log(NULL, LLMQ_LOG_WARN, "msg_send_failed",
                 LLMQ_LOG_STR("reason", "out of memory"), LLMQ_LOG_END);
    else if (s_outbox_full(self, client, box, size))
        s_client_slow(self, client, box);
    else {
        //  Straight to libzmq, as s_send_request; the last frame goes
        //  through the outbox (a reply without payload: its header).
        void *sock = zsock_resolve(self->frontend);
        zmq_send(sock, zframe_data(client->rid), zframe_size(client->rid),
                 ZMQ_SNDMORE);
        if (has_payload) {
            if (zmq_msg_send(&header, sock, ZMQ_SNDMORE) == -1)
                zmq_msg_close(&header);
            s_outbox_send(self, box, &payload, size);
        } else
            s_outbox_send(self, box, &header, size);
        encoded = has_payload = false; //  Sent or closed
    }
    if (encoded)
        zmq_msg_close(&header);
    if (has_payload)
        zmq_msg_close(&payload);
    llmq_msg_destroy(&msg);
}

//  Any message from a known client (client, NULL if none) is a sign of
//  life; a heartbeat ping puts it under the silence rule.
static int64_t s_client_seen(s_broker_t *self, const char *key,
                             s_client_t *client, const llmq_msg_t *msg)
{
    int64_t now = zclock_mono();
    if (llmq_msg_type(msg) == LLMQ_MSG_PING && llmq_msg_heartbeat(msg)) {
        //  Remembered apart from the client's requests: it may have none
        //  pending right now, and its next ones fall under the rule at once.
        s_outbox_t *box = s_outbox_require(self, key);
        if (box)
            box->heartbeat_at = now;
        if (client)
            client->heartbeat = true;
    }
    if (client)
        client->last_seen = now;
    return now;
}

//  A client entry made for a new request: under the silence rule at once
//  if the client heartbeated within the client timeout.
static void s_client_heartbeat_restore(s_broker_t *self, s_client_t *client)
{
    s_outbox_t *box =
        self->outboxes
            ? (s_outbox_t *)zhashx_lookup(self->outboxes, client->key)
            : NULL;
    if (box && box->heartbeat_at &&
        client->last_seen - box->heartbeat_at <= self->config.client_timeout_ms)
        client->heartbeat = true;
}

//  The answer to a heartbeat says how many of the client's requests we
//  hold, so a client whose requests were dropped resends them (3.5).
static void s_pong_pending(s_client_t *client, const llmq_msg_t *ping,
                           llmq_msg_t *pong)
{
    if (!llmq_msg_heartbeat(ping))
        return;
    llmq_msg_set_pending(pong, client ? (int64_t)client->npending : 0);
}

//  The client has gone: drop its queued requests and cancel its in-flight
//  ones at their workers, answering none. Destroys the client (with its
//  last request).
static void s_client_gone(s_broker_t *self, s_client_t *client, int64_t now)
{
    size_t n = client->npending, queued = 0, inflight = 0;
    s_request_t **all = (s_request_t **)calloc(n + 1, sizeof(s_request_t *));
    if (!all)
        return; //  Tried again at the next tick
    size_t i = 0;
    s_request_t *r = client->requests;
    for (; r && i < n; r = r->cnext) {
        all[i++] = r;
        if (r->worker)
            inflight++;
        else
            queued++;
    }
    s_log(self, "warning", "client_gone", LLMQ_LOG_STR("client", client->key),
          LLMQ_LOG_INT("silent_ms", now - client->last_seen),
          LLMQ_LOG_INT("queued", queued), LLMQ_LOG_INT("in_flight", inflight),
          s_END);
    llmq_metrics_add(self->metrics, "llmq_broker_clients_gone_total", NULL, 1);
    const char *labels[] = {"reason", "client_gone", NULL};
    llmq_metrics_add(self->metrics, "llmq_broker_dropped_total", labels,
                     (double)i);
    self->counters.client_gone += i;
    //  The client is freed with its last request: not touched below.
    for (size_t k = 0; k < i; k++) {
        if (all[k]->worker)
            s_cancel_at_worker(self, all[k]);
        s_request_destroy(self, &all[k]);
    }
    free(all);
}

//  Timer: find heartbeating clients silent past the client timeout.
static void s_clients_check(s_broker_t *self, int64_t now)
{
    s_outboxes_sweep(self, now);
    int64_t timeout = self->config.client_timeout_ms;
    if (timeout <= 0 || zhashx_size(self->clients) == 0)
        return;
    zlistx_t *gone = NULL;
    s_client_t *client = (s_client_t *)zhashx_first(self->clients);
    for (; client; client = (s_client_t *)zhashx_next(self->clients))
        if (client->heartbeat && now - client->last_seen > timeout) {
            if (!gone)
                gone = zlistx_new();
            if (gone)
                zlistx_add_end(gone, client);
        }
    if (!gone)
        return;
    client = (s_client_t *)zlistx_first(gone);
    for (; client; client = (s_client_t *)zlistx_next(gone))
        s_client_gone(self, client, now);
    zlistx_destroy(&gone);
}

static void s_metrics_define_clients(llmq_metrics_t *m)
{
    llmq_metrics_define(m, "llmq_broker_clients_gone_total",
                        LLMQ_METRIC_COUNTER,
                        "Heartbeating clients silent past --client-timeout: "
                        "their requests were dropped or cancelled.",
                        NULL, 0);
    llmq_metrics_add(m, "llmq_broker_clients_gone_total", NULL, 0);
}

static void s_handle_client(s_broker_t *self, llmq_msg_t *msg)
{
    //  A known client is found by its routing id's bytes; the hex key is
    //  made only for a new one.
    s_client_id_t cid;
    s_client_t *client = s_client_find(self, msg, &cid);
    char made[560];
    const char *key = client ? client->key : made;
    if (!client) {
        s_msg_key(msg, made, sizeof(made));
        s_key_tenant(self, msg, made, sizeof(made));
    }
    if (self->config.verbose)
        llmq_msg_print(msg);
    int64_t now = s_client_seen(self, key, client, msg);
    switch (llmq_msg_type(msg)) {
    case LLMQ_MSG_REQ:
        s_client_request(self, key, &cid, client, &msg, now);
        break;
    case LLMQ_MSG_CANCEL:
        s_client_cancel(self, client, msg);
        break;
    case LLMQ_MSG_PING: {
        llmq_msg_t *pong = llmq_msg_new(LLMQ_MSG_PONG);
        if (pong) {
            llmq_msg_set_broker(pong, self->name);
            llmq_msg_set_version(pong, s_VERSION);
            llmq_msg_set_time_ms(pong, zclock_time());
            s_pong_pending(client, msg, pong);
            llmq_msg_set_routing_id(pong, llmq_msg_routing_id(msg));
            llmq_msg_send(&pong, self->frontend);
        }
        break;
    }
    case LLMQ_MSG_STATUS:
        s_client_status(self, llmq_msg_routing_id(msg));
        break;
    case LLMQ_MSG_BATCH_OPEN:
    case LLMQ_MSG_BATCH_ADD:
    case LLMQ_MSG_BATCH_CLOSE:
    case LLMQ_MSG_BATCH_GET:
    case LLMQ_MSG_BATCH_CANCEL:
        s_batch_tenant(self, msg);
        if (self->config.module && self->config.module->client_msg)
            self->config.module->client_msg(self->module_state, &msg);
        else
            s_send_error(self, self->frontend, llmq_msg_routing_id(msg),
                         LLMQ_ERR_INVALID_REQUEST, "batches not supported yet",
                         NULL);
        break;
    case LLMQ_MSG_INVALID:
        self->counters.bad_messages++;
        {
            const char *labels[] = {"reason", "bad_message", NULL};
            llmq_metrics_add(self->metrics, "llmq_broker_dropped_total", labels,
                             1);
        }
        s_send_error(self, self->frontend, llmq_msg_routing_id(msg),
                     LLMQ_ERR_BAD_MESSAGE, llmq_msg_invalid_reason(msg),
                     llmq_msg_id(msg));
        break;
    default:
        s_send_error(self, self->frontend, llmq_msg_routing_id(msg),
                     LLMQ_ERR_BAD_MESSAGE,
                     "unexpected message type from a client", llmq_msg_id(msg));
        break;
    }
    llmq_msg_destroy(&msg);
}

//  --------------------------------------------------------------------------
//  Timers.

static void s_expire(s_broker_t *self, int64_t now)
{
    s_request_t *r;
    while ((r = s_expiry_first(self)) && s_expiry_key(r) <= now) {
        s_expiry_unlink(self, r);
        if (r->expire_at > now) { //  Moved later since (s_expiry_set)
            s_expiry_link(self, r, r->expire_at);
            continue;
        }
        char message[200];
        if (r->worker) {
            //  Far past its deadline at a worker: answer, and free the slot.
            s_cancel_at_worker(self, r);
            self->counters.expired++;
            s_fail(self, r, LLMQ_ERR_DEADLINE_EXCEEDED,
                   "deadline passed while a worker held the request");
        } else if (r->deadline <= now) {
            self->counters.expired++;
            snprintf(message, sizeof(message),
                     "deadline passed after %" PRId64 " ms in the queue",
                     now - r->received_at);
            s_fail(self, r, LLMQ_ERR_DEADLINE_EXCEEDED, message);
        } else {
            int64_t at = s_queued_expiry(self, r);
            if (at <= now) {
                self->counters.not_found++;
                snprintf(
                    message, sizeof(message),
                    "no worker serves model '%.64s'%s%.64s%s (waited %d ms)",
                    r->lane->model, r->lane->pool ? " in pool '" : "",
                    r->lane->pool ? r->lane->pool : "",
                    r->lane->pool ? "'" : "", self->config.no_worker_wait_ms);
                s_fail(self, r, LLMQ_ERR_NOT_FOUND, message);
            } else
                s_expiry_set(self, r, at);
        }
    }
    //  Flights whose first request went unanswered (expired just now,
    //  cancelled, its client gone): a waiter goes in its place; and the
    //  cache's writes of this turn are committed (3.7).
    if (self->cache)
        s_cache_promote(self);
}

static void s_heartbeat(s_broker_t *self, int64_t now)
{
    llmq_msg_t *hb = llmq_msg_new(LLMQ_MSG_HB);
    zframe_t *header = hb ? llmq_msg_encode(hb, NULL, 0) : NULL;
    llmq_msg_destroy(&hb);
    zlistx_t *dead = zlistx_new();
    s_worker_t *w = (s_worker_t *)zhashx_first(self->workers);
    while (w) {
        if (now - w->last_seen > self->config.dead_ms) {
            if (dead)
                zlistx_add_end(dead, w);
        } else if (header) {
            zframe_send(&w->rid, self->backend, ZFRAME_MORE | ZFRAME_REUSE);
            zframe_send(&header, self->backend, ZFRAME_REUSE);
        }
        w = (s_worker_t *)zhashx_next(self->workers);
    }
    zframe_destroy(&header);
    w = dead ? (s_worker_t *)zlistx_first(dead) : NULL;
    while (w) {
        s_log(self, "warning", "worker_dead", LLMQ_LOG_STR("worker", w->name),
              LLMQ_LOG_INT("silent_ms", now - w->last_seen),
              LLMQ_LOG_INT("in_flight", w->in_flight), s_END);
        self->counters.worker_deaths++;
        llmq_metrics_add(self->metrics, "llmq_broker_worker_deaths_total", NULL,
                         1);
        s_worker_remove(self, w, "died");
        w = (s_worker_t *)zlistx_next(dead);
    }
    zlistx_destroy(&dead);
}

//  Answer everything still pending `overloaded`: the end of a drain.
static void s_drain_finish(s_broker_t *self)
{
    size_t left = self->queued, kept = self->inflight_count;
    s_worker_t *w = (s_worker_t *)zhashx_first(self->workers);
    while (w) {
        while (w->inflight) {
            s_request_t *r = w->inflight;
            if (r->from_module) {
                //  The module keeps its items for the next run.
                if (self->config.module->item_returned)
                    self->config.module->item_returned(self->module_state,
                                                       r->id);
                s_request_destroy(self, &r);
            } else if (r->client && r->rkey)
                //  Still running at its worker, which keeps the result:
                //  no answer, so the client resends it to the next broker
                //  and it is attached there (PROTOCOL.md 3.3). An
                //  `overloaded` answer would make a client submit it anew
                //  and pay twice.
                s_request_destroy(self, &r);
            else
                s_fail(self, r, LLMQ_ERR_OVERLOADED, "broker shutting down");
        }
        w = (s_worker_t *)zhashx_next(self->workers);
    }
    s_lane_t *lane = (s_lane_t *)zhashx_first(self->lanes);
    while (lane) {
        llmq_queue_node_t *node;
        while ((node = llmq_queue_peek(lane->queue)))
            s_fail(self, LLMQ_QUEUE_ITEM(node, s_request_t, qnode),
                   LLMQ_ERR_OVERLOADED, "broker shutting down");
        lane = (s_lane_t *)zhashx_next(self->lanes);
    }
    s_log(self, "info", "drained", LLMQ_LOG_INT("answered_overloaded", left),
          LLMQ_LOG_INT("left_at_workers", kept), s_END);
    self->drained = true;
    zstr_send(self->pipe, "DRAINED");
}

//  The recovery time is over: parked resends join their lanes (or, for a
//  stream the client saw chunks of, are answered: never spliced).
static void s_unpark(s_broker_t *self)
{
    s_request_t *r;
    while (self->parked &&
           (r = (s_request_t *)zlistx_first(self->parked)) != NULL) {
        zlistx_delete(self->parked, r->park);
        r->park = NULL;
        if (r->chunks > 0)
            s_fail_restarted_stream(self, r);
        else if (s_enqueue(self, r, true))
            s_fail(self, r, LLMQ_ERR_INTERNAL,
                   "broker could not queue the request");
        else
            s_dispatch_lane(self, r->lane);
    }
}

//  Timer: forget lanes nobody used for a minute (clients choose model
//  names).
static void s_lanes_collect(s_broker_t *self, int64_t now)
{
    zlistx_t *idle = zlistx_new();
    s_lane_t *lane = (s_lane_t *)zhashx_first(self->lanes);
    while (lane && idle) {
        if (lane->refs == 0 && now - lane->idle_since > 60000)
            zlistx_add_end(idle, lane);
        lane = (s_lane_t *)zhashx_next(self->lanes);
    }
    lane = idle ? (s_lane_t *)zlistx_first(idle) : NULL;
    while (lane) {
        s_worker_t *w = (s_worker_t *)zlistx_first(lane->workers);
        while (w) {
            void *handle = zlistx_find(w->lanes, lane);
            if (handle)
                zlistx_delete(w->lanes, handle);
            w = (s_worker_t *)zlistx_next(lane->workers);
        }
        if (lane == self->last_lane)
            self->last_lane = NULL;
        zhashx_delete(self->lanes, lane->key);
        lane = (s_lane_t *)zlistx_next(idle);
    }
    zlistx_destroy(&idle);
}

static void s_timers(s_broker_t *self, int64_t now)
{
    s_expire(self, now);
    if (self->draining && !self->drained &&
        (self->queued + self->inflight_count == 0 ||
         now >= self->drain_deadline))
        s_drain_finish(self);
    if (now < self->next_tick)
        return;
    self->next_tick = now + s_TICK_MS;
    s_acks_flush(self, now);
    s_clients_check(self, now);
    if (self->route)
        s_route_tick(self, now);
    //  A worker silent for half the dead time is probably dead: sending it
    //  more would only lengthen the list of requests its death delays.
    for (s_worker_t *w = (s_worker_t *)zhashx_first(self->workers); w;
         w = (s_worker_t *)zhashx_next(self->workers))
        w->silent = now - w->last_seen > self->config.dead_ms / 2;
    if (now >= self->recovery_end)
        s_unpark(self);
    if (zhashx_size(self->attach) && now % 10000 < s_TICK_MS) {
        zlistx_t *old = zhashx_keys(self->attach);
        const char *k = old ? (const char *)zlistx_first(old) : NULL;
        for (; k; k = (const char *)zlistx_next(old)) {
            s_attach_t *a = (s_attach_t *)zhashx_lookup(self->attach, k);
            if (a && now - a->at > s_ATTACH_TTL)
                zhashx_delete(self->attach, k);
        }
        zlistx_destroy(&old);
    }
    if (now >= self->next_heartbeat) {
        self->next_heartbeat = now + self->config.heartbeat_ms;
        s_heartbeat(self, now);
    }
    if (self->overloaded && self->queued < self->config.max_queue / 10 * 9) {
        self->overloaded = false;
        s_log(self, "info", "overload_end",
              LLMQ_LOG_INT("queued", self->queued), s_END);
    }
    s_lanes_collect(self, now);
    //  A burst that backs up in libzmq's pipes leaves freed receive buffers
    //  scattered between long-lived requests, and glibc keeps such pages.
    //  While a large queue exists, hand them back now and then.
#ifdef __GLIBC__
    if (self->queued > 10000 && now >= self->next_trim) {
        self->next_trim = now + 5000;
        malloc_trim(0);
    }
#endif
    if (self->config.module && self->config.module->tick)
        self->config.module->tick(self->module_state, now);
    //  Work a module gained since (a batch closed) goes to idle credit.
    if (self->config.module && self->config.module->next_item) {
        s_worker_t *w = (s_worker_t *)zhashx_first(self->workers);
        while (w) {
            if (w->credit > 0 && w->healthy && !w->silent && !w->leaving)
                s_dispatch_module(self, w);
            w = (s_worker_t *)zhashx_next(self->workers);
        }
    }
}

//  --------------------------------------------------------------------------
//  Metrics gauges, refreshed at each scrape.

//  llmq_broker_tenant_queued{tenant}: the s_TENANT_LABELS tenants with most
//  requests waiting, the rest summed as "other" (bounded label count).
#define s_TENANT_LABELS 20
static void s_collect_tenants(llmq_metrics_t *metrics, s_broker_t *self)
{
    llmq_metrics_reset(metrics, "llmq_broker_tenant_queued");
    llmq_metrics_set(metrics, "llmq_broker_queued_bytes", NULL,
                     (double)self->queued_bytes);
    s_tenant_t *top[s_TENANT_LABELS];
    size_t ntop = 0, other = 0;
    s_tenant_t *t =
        self->tenants ? (s_tenant_t *)zhashx_first(self->tenants) : NULL;
    for (; t; t = (s_tenant_t *)zhashx_next(self->tenants)) {
        if (!t->queued)
            continue;
        s_tenant_t *out = t;
        if (ntop == s_TENANT_LABELS) {
            size_t least = 0;
            for (size_t i = 1; i < ntop; i++)
                if (top[i]->queued < top[least]->queued)
                    least = i;
            if (top[least]->queued < t->queued) {
                out = top[least];
                top[least] = t;
            }
            other += out->queued;
        } else
            top[ntop++] = t;
    }
    for (size_t i = 0; i < ntop; i++) {
        const char *labels[] = {"tenant", top[i]->name, NULL};
        llmq_metrics_set(metrics, "llmq_broker_tenant_queued", labels,
                         (double)top[i]->queued);
    }
    const char *labels[] = {"tenant", "other", NULL};
    if (other)
        llmq_metrics_set(metrics, "llmq_broker_tenant_queued", labels,
                         (double)other);
}

//  llmq_broker_tenant_spend_usd{tenant}: today's (UTC) spend of the
//  s_TENANT_LABELS tenants that spent most, the rest summed as "other".
static void s_collect_spend(llmq_metrics_t *metrics, s_broker_t *self)
{
    llmq_metrics_reset(metrics, "llmq_broker_tenant_spend_usd");
    zhashx_t *spend = s_spend_today(self);
    s_spend_t *top[s_TENANT_LABELS];
    size_t ntop = 0;
    double other = 0;
    s_spend_t *e = spend ? (s_spend_t *)zhashx_first(spend) : NULL;
    for (; e; e = (s_spend_t *)zhashx_next(spend)) {
        if (ntop < s_TENANT_LABELS) {
            top[ntop++] = e;
            continue;
        }
        size_t least = 0;
        for (size_t i = 1; i < ntop; i++)
            if (top[i]->usd < top[least]->usd)
                least = i;
        s_spend_t *out = e;
        if (top[least]->usd < e->usd) {
            out = top[least];
            top[least] = e;
        }
        other += out->usd;
    }
    for (size_t i = 0; i < ntop; i++) {
        const char *labels[] = {"tenant", top[i]->name, NULL};
        llmq_metrics_set(metrics, "llmq_broker_tenant_spend_usd", labels,
                         top[i]->usd);
    }
    const char *labels[] = {"tenant", "other", NULL};
    if (other > 0)
        llmq_metrics_set(metrics, "llmq_broker_tenant_spend_usd", labels,
                         other);
}

static void s_collect(llmq_metrics_t *metrics, void *arg)
{
    s_broker_t *self = (s_broker_t *)arg;
    llmq_metrics_reset(metrics, "llmq_broker_queue_depth");
    s_lane_t *lane = (s_lane_t *)zhashx_first(self->lanes);
    size_t lanes = 0;
    while (lane && lanes++ < s_MAX_METRIC_MODELS) {
        const char *labels[] = {"model", lane->model, "pool",
                                lane->pool ? lane->pool : "", NULL};
        llmq_metrics_set(metrics, "llmq_broker_queue_depth", labels,
                         (double)llmq_queue_size(lane->queue));
        lane = (s_lane_t *)zhashx_next(self->lanes);
    }
    size_t live = 0, leaving = 0;
    s_worker_t *w = (s_worker_t *)zhashx_first(self->workers);
    while (w) {
        if (w->leaving)
            leaving++;
        else
            live++;
        w = (s_worker_t *)zhashx_next(self->workers);
    }
    const char *live_labels[] = {"state", "live", NULL};
    const char *leaving_labels[] = {"state", "leaving", NULL};
    llmq_metrics_set(metrics, "llmq_broker_workers", live_labels, (double)live);
    llmq_metrics_set(metrics, "llmq_broker_workers", leaving_labels,
                     (double)leaving);
    llmq_metrics_set(metrics, "llmq_broker_queued", NULL, (double)self->queued);
    llmq_metrics_set(metrics, "llmq_broker_in_flight", NULL,
                     (double)self->inflight_count);
    llmq_metrics_set(metrics, "llmq_broker_clients", NULL,
                     (double)zhashx_size(self->clients));
    llmq_metrics_set(metrics, "llmq_broker_uptime_seconds", NULL,
                     (double)(zclock_mono() - self->started_at) / 1000.0);
    s_collect_tenants(metrics, self);
    s_collect_spend(metrics, self);
    llmq_cache_metrics_collect(self->cache, metrics);
}

static void s_metrics_define(llmq_metrics_t *m)
{
    static const double buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,   0.25,   0.5,   1,    2.5,   5,
                                     10,    30,     60,    120,  300};
    llmq_metrics_define(
        m, "llmq_broker_requests_total", LLMQ_METRIC_COUNTER,
        "Requests answered, by model and outcome (ok or error code).", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_request_latency_seconds",
                        LLMQ_METRIC_HISTOGRAM,
                        "Time from receipt to answer, by model.", buckets,
                        sizeof(buckets) / sizeof(buckets[0]));
    llmq_metrics_define(m, "llmq_broker_received_total", LLMQ_METRIC_COUNTER,
                        "Requests accepted into a queue.", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_requeues_total", LLMQ_METRIC_COUNTER,
                        "Requests requeued after their worker died or left.",
                        NULL, 0);
    llmq_metrics_define(m, "llmq_broker_dropped_total", LLMQ_METRIC_COUNTER,
                        "Messages dropped, by reason.", NULL, 0);
    llmq_metrics_define(
        m, "llmq_broker_worker_deaths_total", LLMQ_METRIC_COUNTER,
        "Workers declared dead after heartbeat silence.", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_attached_total", LLMQ_METRIC_COUNTER,
                        "Resent requests attached to a worker that held "
                        "their result or still ran them.",
                        NULL, 0);
    llmq_metrics_define(m, "llmq_broker_queue_depth", LLMQ_METRIC_GAUGE,
                        "Requests waiting, by model and pool.", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_queued", LLMQ_METRIC_GAUGE,
                        "Requests waiting in all queues.", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_queued_bytes", LLMQ_METRIC_GAUGE,
                        "Payload bytes waiting in all queues.", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_tenant_queued", LLMQ_METRIC_GAUGE,
                        "Requests waiting, by tenant (the 20 with most, "
                        "the rest as other).",
                        NULL, 0);
    llmq_metrics_define(m, "llmq_broker_tenant_spend_usd", LLMQ_METRIC_GAUGE,
                        "Cost of the results each tenant got today (UTC), "
                        "the 20 that spent most, the rest as other.",
                        NULL, 0);
    llmq_metrics_define(m, "llmq_broker_in_flight", LLMQ_METRIC_GAUGE,
                        "Requests held by workers.", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_workers", LLMQ_METRIC_GAUGE,
                        "Registered workers, by state.", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_clients", LLMQ_METRIC_GAUGE,
                        "Clients with requests pending.", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_uptime_seconds", LLMQ_METRIC_GAUGE,
                        "Seconds since the broker started.", NULL, 0);
    //  Present from the start, so a scrape shows them before any event.
    llmq_metrics_add(m, "llmq_broker_received_total", NULL, 0);
    llmq_metrics_add(m, "llmq_broker_requeues_total", NULL, 0);
    llmq_metrics_add(m, "llmq_broker_worker_deaths_total", NULL, 0);
    llmq_metrics_define(m, "llmq_broker_bad_usage_total", LLMQ_METRIC_COUNTER,
                        "Results whose usage (tokens, cost) was NaN, "
                        "infinite, negative or absurd, counted as 0.",
                        NULL, 0);
    llmq_metrics_add(m, "llmq_broker_bad_usage_total", NULL, 0);
    s_metrics_define_clients(m);
    llmq_metrics_usage_define(m);
    llmq_cache_metrics_define(m);
    llmq_metrics_define(m, "llmq_broker_fallbacks_total", LLMQ_METRIC_COUNTER,
                        "Requests moved along a route's fallback chain, by "
                        "route and reason (PROTOCOL.md 3.6).",
                        NULL, 0);
    llmq_metrics_define(m, "llmq_broker_auth_denied_total", LLMQ_METRIC_COUNTER,
                        "Peers refused by CURVE (unknown key, no CURVE, "
                        "wrong broker key)",
                        NULL, 0);
}

//  --------------------------------------------------------------------------
//  Life cycle.

//  Is a bound endpoint reachable only from this host?
static bool s_loopback(const char *endpoint)
{
    if (strncmp(endpoint, "tcp://", 6) != 0)
        return true; //  ipc://, inproc://
    const char *host = endpoint + 6;
    return strncmp(host, "127.", 4) == 0 ||
           strncmp(host, "localhost:", 10) == 0 ||
           strncmp(host, "[::1]", 5) == 0;
}

//  Without CURVE, one warning for the sockets others can reach.
static void s_warn_insecure(s_broker_t *self)
{
    if (self->auth || !self->frontend_ep || !self->backend_ep)
        return;
    bool front = !s_loopback(self->frontend_ep);
    bool back = !s_loopback(self->backend_ep);
    if (!front && !back)
        return;
    char endpoints[600];
    snprintf(endpoints, sizeof(endpoints), "%s%s%s",
             front ? self->frontend_ep : "", front && back ? "," : "",
             back ? self->backend_ep : "");
    s_log(self, "warning", "insecure_bind",
          LLMQ_LOG_STR("endpoints", endpoints),
          LLMQ_LOG_STR(
              "hint",
              "no CURVE: anyone who reaches these can use them (--curve-cert)"),
          s_END);
}

//  A refused peer: counted always, logged the first time.
static void s_auth_denied(llmq_auth_side_t side, const char *reason,
                          const char *peer, bool first, void *arg)
{
    s_broker_t *self = (s_broker_t *)arg;
    const char *socket = side == LLMQ_AUTH_FRONTEND ? "frontend" : "backend";
    const char *labels[] = {"socket", socket, "reason", reason, NULL};
    llmq_metrics_add(self->metrics, "llmq_broker_auth_denied_total", labels, 1);
    if (first)
        s_log(self, "warning", "auth_denied", LLMQ_LOG_STR("socket", socket),
              LLMQ_LOG_STR("reason", reason), LLMQ_LOG_STR("peer", peer),
              s_END);
}

//  CURVE on: load the keypair and start the ZAP handler. Sets self->error.
static void s_auth_start(s_broker_t *self, const llmq_broker_config_t *config)
{
    bool any = (config->curve_cert && *config->curve_cert) ||
               (config->client_keys && *config->client_keys) ||
               (config->worker_keys && *config->worker_keys);
    if (!any)
        return;
    char err[512] = "";
    self->cert = llmq_curve_cert_load(config->curve_cert, err, sizeof(err));
    if (self->cert)
        self->auth = llmq_auth_new(config->client_keys, config->worker_keys,
                                   err, sizeof(err));
    if (!self->auth) {
        self->error = zsys_sprintf("CURVE: %s (the broker needs --curve-cert, "
                                   "--client-keys and --worker-keys)",
                                   err);
        return;
    }
    llmq_auth_set_denied(self->auth, s_auth_denied, self);
}

static zsock_t *s_bind(s_broker_t *self, const char *endpoint, bool frontend,
                       char **bound)
{
    zsock_t *sock = zsock_new(ZMQ_ROUTER);
    if (!sock)
        return NULL;
    zsock_set_maxmsgsize(sock, (int)LLMQ_MAX_FRAME_SIZE);
    zsock_set_router_mandatory(sock, 0);
    //  Deep buffers: the broker's queue is the real bound, not the socket's.
    //  Clients: a little above our own bound (s_outbox_full), which counts
    //  and logs what it drops, where ZeroMQ would drop silently.
    zsock_set_sndhwm(sock, frontend ? s_client_hwm(self) + 100 : 200000);
    zsock_set_rcvhwm(sock, 200000);
    zsock_set_linger(sock, 2000);
    //  Receives never block: the loop reads until EAGAIN, which spares a
    //  ZMQ_EVENTS query (and its poll syscall) per message.
    zsock_set_rcvtimeo(sock, 0);
    //  Under CURVE a routing id stays with the connection that has it: no
    //  takeover by another key (PROTOCOL.md 3.4).
    if (frontend && !self->auth)
        zsock_set_router_handover(sock, 1);
    if (self->auth &&
        llmq_auth_server_apply(self->auth, sock, self->cert,
                               frontend ? LLMQ_AUTH_FRONTEND
                                        : LLMQ_AUTH_BACKEND) != 0) {
        self->error = zsys_sprintf("cannot set up CURVE on %s", endpoint);
        zsock_destroy(&sock);
        return NULL;
    }
    if (zsock_bind(sock, "%s", endpoint) == -1) {
        self->error = zsys_sprintf("cannot bind %s: %s", endpoint,
                                   zmq_strerror(zmq_errno()));
        zsock_destroy(&sock);
        return NULL;
    }
    char *last = zsock_last_endpoint(sock);
    *bound = last ? last : strdup(endpoint);
    return sock;
}

static void s_attach_free(void **item)
{
    free(*item);
    *item = NULL;
}

static s_broker_t *s_broker_new(zsock_t *pipe,
                                const llmq_broker_config_t *config)
{
    s_broker_t *self = (s_broker_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->pipe = pipe;
    self->config = *config;
    //  Borrowed strings of the caller's config die with zactor_new's caller.
    self->name = strdup(config->name ? config->name : "llmq-broker");
    self->config.frontend = NULL;
    self->config.backend = NULL;
    self->config.metrics = NULL;
    self->config.curve_cert = NULL;
    self->config.client_keys = NULL;
    self->config.admin_key = s_strdup_or_null(config->admin_key);
    self->config.admin_tenant = s_strdup_or_null(config->admin_tenant);
    self->config.routes = s_strdup_or_null(config->routes);
    self->config.worker_keys = NULL;
    self->config.name = self->name;
    self->started_at = zclock_mono();
    self->clients = zhashx_new();
    self->workers = zhashx_new();
    self->lanes = zhashx_new();
    self->groups = zhashx_new();
    self->metric_models = zhashx_new();
    self->models = llmq_models_new(); //  NULL: no checks
    self->models_gen = 1;             //  Lanes start at 0: not looked up
    self->expiry = llmq_queue_new();
    self->metrics = llmq_metrics_new();
    self->log = llmq_log_new("llmq-broker");
    if (self->log)
        llmq_log_setup(self->log, NULL, config->json_logs,
                       config->quiet ? LLMQ_LOG_OFF : LLMQ_LOG_INFO);
    self->attach = zhashx_new();
    self->parked = zlistx_new();
    //  Broker ids of this run never match those of an earlier run (3.3).
    self->next_bid =
        ((uint64_t)zclock_time() * 2654435761u ^ (uint64_t)getpid() * 40503u) &
        0x7fffffff;
    //  Table hashes a client cannot predict (ids and routing ids are theirs).
    self->seed = s_hash_bytes(&self, sizeof(self),
                              (uint64_t)zclock_usecs() ^ self->next_bid);
    self->recovery_end = self->started_at + (self->config.recovery_ms >= 0
                                                 ? self->config.recovery_ms
                                                 : self->config.dead_ms);
    if (!self->name || !self->clients || !self->workers || !self->lanes ||
        !self->groups || !self->metric_models || !self->expiry ||
        !self->metrics || !self->attach || !self->parked) {
        self->error = strdup("out of memory");
        return self;
    }
    zhashx_set_destructor(self->clients, s_client_free);
    zhashx_set_destructor(self->workers, s_worker_free);
    zhashx_set_destructor(self->lanes, s_lane_free);
    zhashx_set_destructor(self->groups, s_group_free);
    zhashx_set_destructor(self->attach, s_attach_free);
    s_metrics_define(self->metrics);
    self->m_received =
        llmq_metrics_series(self->metrics, "llmq_broker_received_total", NULL);
    llmq_metrics_set_collect(self->metrics, s_collect, self);

    s_auth_start(self, config);
    if (!self->error)
        self->frontend = s_bind(
            self, config->frontend ? config->frontend : "tcp://127.0.0.1:5555",
            true, &self->frontend_ep);
    if (self->frontend)
        self->backend = s_bind(
            self, config->backend ? config->backend : "tcp://127.0.0.1:5556",
            false, &self->backend_ep);
    if (self->backend && config->metrics && *config->metrics &&
        !streq(config->metrics, "0") &&
        llmq_metrics_listen(self->metrics, config->metrics) < 0)
        self->error = zsys_sprintf("cannot listen for metrics on %s: %s",
                                   config->metrics, strerror(errno));
    if (!self->error && config->cache_path)
        s_cache_open(self, config);
    if (!self->error && self->config.routes)
        s_route_start(self);
    if (!self->error && config->module && config->module->create) {
        self->module_state = config->module->create(self, config->module->arg);
        if (!self->module_state)
            self->error =
                zsys_sprintf("module %s failed to start",
                             config->module->name ? config->module->name : "?");
    }
    self->next_heartbeat = self->started_at + self->config.heartbeat_ms;
    if (!self->error)
        s_warn_insecure(self);
    if (!self->error)
        s_log(self, "info", "start",
              LLMQ_LOG_STR("frontend", self->frontend_ep),
              LLMQ_LOG_STR("backend", self->backend_ep),
              LLMQ_LOG_STR("metrics", llmq_metrics_url(self->metrics)),
              LLMQ_LOG_STR("curve", self->auth ? "on" : "off"), s_END);
    return self;
}

static void s_broker_destroy(s_broker_t **self_p)
{
    s_broker_t *self = *self_p;
    if (!self)
        return;
    *self_p = NULL;
    s_cache_close(self);
    if (self->module_state && self->config.module &&
        self->config.module->destroy)
        self->config.module->destroy(&self->module_state);
    //  Requests first: they point into clients, lanes and workers.
    if (self->workers) {
        s_worker_t *w = (s_worker_t *)zhashx_first(self->workers);
        while (w) {
            while (w->inflight) {
                s_request_t *r = w->inflight;
                s_request_destroy(self, &r);
            }
            w = (s_worker_t *)zhashx_next(self->workers);
        }
    }
    if (self->lanes) {
        s_lane_t *lane = (s_lane_t *)zhashx_first(self->lanes);
        while (lane) {
            llmq_queue_node_t *node;
            while ((node = llmq_queue_peek(lane->queue))) {
                s_request_t *r = LLMQ_QUEUE_ITEM(node, s_request_t, qnode);
                s_request_destroy(self, &r);
            }
            lane = (s_lane_t *)zhashx_next(self->lanes);
        }
    }
    s_request_t *parked;
    while (self->parked &&
           (parked = (s_request_t *)zlistx_first(self->parked)) != NULL)
        s_request_destroy(self, &parked);
    zlistx_destroy(&self->parked);
    zhashx_destroy(&self->attach);
    zhashx_destroy(&self->clients);
    zhashx_destroy(&self->tenants);
    zhashx_destroy(&self->spend);
    zhashx_destroy(&self->outboxes);
    zhashx_destroy(&self->groups);
    //  Workers and lanes point at each other only through borrowed lists.
    zhashx_destroy(&self->workers);
    zhashx_destroy(&self->lanes);
    free(self->slots);
    free(self->client_index.slots);
    free(self->worker_index.slots);
    free(self->pending.slots);
    while (self->pool) {
        s_request_t *r = self->pool;
        self->pool = r->cnext;
        free(r);
    }
    free(self->free_slots);
    zhashx_destroy(&self->metric_models);
    llmq_models_destroy(&self->models);
    llmq_queue_destroy(&self->expiry);
    llmq_metrics_destroy(&self->metrics);
    llmq_log_destroy(&self->log);
    llmq_cache_destroy(&self->cache);
    zsock_destroy(&self->frontend);
    zsock_destroy(&self->backend);
    llmq_auth_destroy(&self->auth);
    zcert_destroy(&self->cert);
    free(self->frontend_ep);
    free(self->backend_ep);
    free(self->error);
    free(self->name);
    free((char *)self->config.admin_key);
    free((char *)self->config.admin_tenant);
    free((char *)self->config.routes);
    llmq_route_destroy(&self->route);
    free(self);
}

static void s_handle_pipe(s_broker_t *self)
{
    zmsg_t *msg = zmsg_recv(self->pipe);
    if (!msg) {
        self->terminated = true;
        return;
    }
    char *command = zmsg_popstr(msg);
    if (!command || streq(command, "$TERM"))
        self->terminated = true;
    else if (streq(command, "ENDPOINTS")) {
        if (self->error)
            zstr_sendx(self->pipe, "ERROR", self->error, NULL);
        else {
            const char *url = llmq_metrics_url(self->metrics);
            zstr_sendx(self->pipe, self->frontend_ep, self->backend_ep,
                       url ? url : "", NULL);
        }
    } else if (streq(command, "DRAIN")) {
        if (!self->draining) {
            self->draining = true;
            self->drain_deadline = zclock_mono() + self->config.drain_ms;
            s_log(self, "info", "drain_start",
                  LLMQ_LOG_INT("pending", self->queued + self->inflight_count),
                  s_END);
        }
        if (self->error)
            zstr_send(self->pipe, "DRAINED");
    } else if (streq(command, "ROUTES"))
        s_route_reload(self);
    else if (streq(command, "COUNTERS")) {
        s_counters_t *c = &self->counters;
        zstr_sendf(self->pipe,
                   "received=%" PRIu64 " dispatched=%" PRIu64 " ok=%" PRIu64
                   " error=%" PRIu64 " requeued=%" PRIu64 " dropped=%" PRIu64
                   " expired=%" PRIu64 " overloaded=%" PRIu64 " queued=%zu"
                   " in_flight=%zu workers=%zu clients=%zu",
                   c->received, c->dispatched, c->answered_ok,
                   c->answered_error, c->requeued, c->dropped, c->expired,
                   c->overloaded, self->queued, self->inflight_count,
                   zhashx_size(self->workers), zhashx_size(self->clients));
    }
    free(command);
    zmsg_destroy(&msg);
}

//  Read up to s_MAX_BATCH messages from a socket: batching amortises the
//  poll, and the cap keeps one busy socket from starving the other.
static void s_drain_socket(s_broker_t *self, zsock_t *socket, bool clients)
{
    //  The peer's User-Id matters only under CURVE (s_tenant_of).
    //  Payloads stay libzmq's messages: requests keep theirs (sent with
    //  zmq_msg_copy), results move theirs on (s_client_send).
    int flags = (self->auth ? 0 : LLMQ_MSG_RECV_NO_USER_ID) |
                LLMQ_MSG_RECV_PAYLOAD_MSG |
                LLMQ_MSG_RECV_ROUTER; //  Both are ROUTERs
    //  Results are forwarded: spliced, not re-encoded whole.
    if (!clients)
        flags |= LLMQ_MSG_RECV_SPLICE;
    for (int i = 0; i < s_MAX_BATCH; i++) {
        llmq_msg_t *msg = llmq_msg_recv_ex(socket, flags);
        if (!msg)
            break; //  Nothing more for now (rcvtimeo is 0)
        if (clients)
            s_handle_client(self, msg);
        else
            s_handle_worker(self, msg);
    }
}

/*  The loop's wait without CURVE or metrics scrapes (s_epoll_fits): one
    epoll_wait over the ZMQ_FDs of the pipe, backend and frontend (and the
    metrics listener), instead of zmq_poll, which asks every socket for
    ZMQ_FD and ZMQ_EVENTS before and after its poll. A ZMQ_FD only says
    "ask ZMQ_EVENTS": input can wait with the fd quiet (a send on the
    socket may have taken its signal), so every socket is asked before
    sleeping, and the loop does not sleep while one has input. */

//  Epoll data of the loop's wake-ups: the index of the poll item.
enum { S_EV_PIPE, S_EV_BACKEND, S_EV_FRONTEND, S_EV_METRICS, S_EV_COUNT };

//  1 if sock has a message waiting, 0 if not, -1 if the context is gone.
static int s_readable(void *sock)
{
    int events = 0;
    size_t size = sizeof events;
    if (zmq_getsockopt(sock, ZMQ_EVENTS, &events, &size) != 0)
        return zmq_errno() == ETERM ? -1 : 0;
    return (events & ZMQ_POLLIN) != 0;
}

//  fd into epfd with the tag of its poll item; -1 if that failed.
static int s_epoll_add(int epfd, int fd, uint32_t tag)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u32 = tag;
    return fd >= 0 ? epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) : -1;
}

//  The epoll set of the loop's sockets and *metrics_fd, the metrics
//  listener it holds (or -1). Returns -1 if the broker cannot use one:
//  its loop then always polls with zmq_poll. The caller closes it.
static int s_epoll_new(s_broker_t *self, int *metrics_fd)
{
    *metrics_fd = -1;
    if (self->error)
        return -1;
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return -1;
    if (s_epoll_add(epfd, zsock_fd(self->pipe), S_EV_PIPE) ||
        s_epoll_add(epfd, zsock_fd(self->backend), S_EV_BACKEND) ||
        s_epoll_add(epfd, zsock_fd(self->frontend), S_EV_FRONTEND)) {
        close(epfd);
        return -1;
    }
    //  Before any scrape the listener is the metrics' only item; it is
    //  opened once, in s_broker_new.
    zmq_pollitem_t item = {NULL, -1, 0, 0};
    if (llmq_metrics_poll_items(self->metrics, &item, 1) == 1 &&
        s_epoll_add(epfd, item.fd, S_EV_METRICS) == 0)
        *metrics_fd = item.fd;
    return epfd;
}

//  Whether the loop's poll items are those in the epoll set: pipe,
//  backend, frontend and at most the metrics listener (no CURVE handler,
//  no scrape connection).
static bool s_epoll_fits(const zmq_pollitem_t *items, size_t n, int metrics_fd)
{
    //  A CURVE handler's item is a socket: its fd field means nothing.
    return n == 3 ||
           (n == 4 && metrics_fd >= 0 && !items[3].socket &&
            items[3].fd == metrics_fd && items[3].events == ZMQ_POLLIN);
}

//  What zmq_poll over items (s_epoll_fits) does, with epfd: sets their
//  revents. Returns -1 if the context is gone or epoll failed, else 0.
static int s_wait_epoll(int epfd, zmq_pollitem_t *items, size_t n, long timeout)
{
    bool ready = false;
    for (size_t i = 0; i < S_EV_METRICS; i++) {
        int r = s_readable(items[i].socket);
        if (r < 0)
            return -1;
        items[i].revents = r ? ZMQ_POLLIN : 0;
        ready = ready || r;
    }
    if (n > S_EV_METRICS)
        items[S_EV_METRICS].revents = 0;
    if (timeout > INT_MAX)
        timeout = INT_MAX;
    struct epoll_event evs[S_EV_COUNT];
    int got = epoll_wait(epfd, evs, S_EV_COUNT, ready ? 0 : (int)timeout);
    if (got < 0)
        return errno == EINTR ? 0 : -1;
    for (int i = 0; i < got; i++) {
        uint32_t tag = evs[i].data.u32;
        if (tag >= n || items[tag].revents)
            continue;
        if (tag == S_EV_METRICS)
            items[tag].revents = ZMQ_POLLIN; //  A plain fd, level-triggered
        else {
            int r = s_readable(items[tag].socket);
            if (r < 0)
                return -1;
            items[tag].revents = r ? ZMQ_POLLIN : 0;
        }
    }
    return 0;
}

void llmq_broker(zsock_t *pipe, void *args)
{
    llmq_broker_config_t defaults;
    llmq_broker_config_defaults(&defaults);
    const llmq_broker_config_t *config =
        args ? (const llmq_broker_config_t *)args : &defaults;
    s_broker_t *self = s_broker_new(pipe, config);
    zsock_signal(pipe, 0);
    if (!self)
        return;
    if (self->error)
        s_log(self, "error", "start_failed",
              LLMQ_LOG_STR("reason", self->error), s_END);

    enum { MAX_ITEMS = 48 };
    zmq_pollitem_t items[MAX_ITEMS];
    int metrics_fd;
    int epfd = s_epoll_new(self, &metrics_fd);
    while (!self->terminated) {
        size_t n = 0;
        items[n++] = (zmq_pollitem_t){zsock_resolve(pipe), 0, ZMQ_POLLIN, 0};
        if (!self->error) {
            items[n++] = (zmq_pollitem_t){zsock_resolve(self->backend), 0,
                                          ZMQ_POLLIN, 0};
            items[n++] = (zmq_pollitem_t){zsock_resolve(self->frontend), 0,
                                          ZMQ_POLLIN, 0};
        }
        size_t first_auth = n;
        if (!self->error && self->auth)
            n += llmq_auth_poll_items(self->auth, items + n, MAX_ITEMS - n);
        size_t first_metric = n;
        if (!self->error)
            n += llmq_metrics_poll_items(self->metrics, items + n,
                                         MAX_ITEMS - n);

        int64_t now = zclock_mono();
        int64_t wake = self->next_tick;
        s_request_t *first = s_expiry_first(self);
        if (first && s_expiry_key(first) < wake)
            wake = s_expiry_key(first);
        long timeout = wake > now ? (long)(wake - now) : 0;
        if (epfd >= 0 && s_epoll_fits(items, n, metrics_fd)) {
            if (s_wait_epoll(epfd, items, n, timeout))
                break; //  Context terminated
        } else if (zmq_poll(items, (int)n, timeout) == -1 &&
                   zmq_errno() != EINTR)
            break; //  Context terminated

        if (items[0].revents & ZMQ_POLLIN)
            s_handle_pipe(self);
        if (!self->error && !self->terminated) {
            //  Workers first: their answers free credit for new requests.
            if (items[1].revents & ZMQ_POLLIN)
                s_drain_socket(self, self->backend, false);
            if (items[2].revents & ZMQ_POLLIN)
                s_drain_socket(self, self->frontend, true);
            if (self->auth)
                llmq_auth_service(self->auth, items + first_auth,
                                  first_metric - first_auth);
            now = zclock_mono();
            llmq_metrics_service(self->metrics, items + first_metric,
                                 n - first_metric, now);
            s_timers(self, now);
        }
    }
    if (epfd >= 0)
        close(epfd);
    s_broker_destroy(&self);
}

void llmq_broker_config_defaults(llmq_broker_config_t *config)
{
    memset(config, 0, sizeof(*config));
    config->frontend = "tcp://127.0.0.1:5555";
    config->backend = "tcp://127.0.0.1:5556";
    config->metrics = NULL;
    config->name = "llmq-broker";
    config->max_queue = 1000000;
    config->no_worker_wait_ms = 10000;
    config->drain_ms = 10000;
    config->heartbeat_ms = 1000;
    config->dead_ms = 3000;
    config->inflight_grace_ms = 5000;
    config->default_deadline_ms = 600000;
    config->recovery_ms = -1;
    config->max_queue_bytes = (size_t)2 << 30;
    config->tenant_max_queue = 200000;
    config->tenant_max_bytes = (size_t)1 << 30;
    config->client_timeout_ms = 10000;
    config->client_hwm = 10000;
    config->client_max_bytes = 64 << 20;
}

int llmq_broker_endpoints(zactor_t *broker, char **frontend, char **backend,
                          char **metrics)
{
    *frontend = *backend = *metrics = NULL;
    if (zstr_send(broker, "ENDPOINTS"))
        return -1;
    char *first = NULL, *second = NULL, *third = NULL;
    if (zstr_recvx(broker, &first, &second, &third, NULL) < 2 ||
        streq(first, "ERROR")) {
        zstr_free(&first);
        zstr_free(&second);
        zstr_free(&third);
        return -1;
    }
    *frontend = first;
    *backend = second;
    *metrics = third ? third : strdup("");
    return 0;
}

int llmq_broker_submit(llmq_broker_core_t *self, llmq_msg_t **req_p,
                       llmq_broker_result_fn *fn, void *arg)
{
    llmq_msg_t *msg = *req_p;
    *req_p = NULL;
    int op = -1;
    for (int i = 0; msg && i < 3; i++)
        if (llmq_msg_op(msg) && streq(llmq_msg_op(msg), s_ops[i]))
            op = i;
    s_lane_t *lane =
        (msg && op >= 0 && llmq_msg_model(msg) && llmq_msg_payload(msg))
            ? s_lane_require(self, llmq_msg_model(msg), llmq_msg_pool(msg))
            : NULL;
    s_request_t *r = lane ? s_request_new(self, NULL, llmq_msg_id(msg)) : NULL;
    if (!r || self->queued >= self->config.max_queue) {
        s_request_free(self, r);
        llmq_msg_destroy(&msg);
        return -1;
    }
    int64_t now = zclock_mono();
    r->fn = fn;
    r->fn_arg = arg;
    s_request_init(r, lane, op, msg, now);
    s_payload_take(r, msg);
    llmq_msg_destroy(&msg);
    self->counters.received++;
    if (self->queued >= s_COMPACT_ABOVE &&
        (llmq_queue_size(lane->queue) || !s_best_worker(lane)))
        s_payload_compact(r);
    if (s_enqueue(self, r, false)) {
        r->fn = NULL; //  -1 means the callback never runs
        s_request_destroy(self, &r);
        return -1;
    }
    s_dispatch_lane(self, lane);
    return 0;
}

void llmq_broker_reply(llmq_broker_core_t *self, llmq_msg_t **msg_p)
{
    if (*msg_p)
        llmq_msg_send(msg_p, self->frontend);
}

//  Provider batch jobs (issue 8): a worker is a candidate when it said
//  batch_api in its hello, is alive and healthy, and is not leaving.
static bool s_job_worker_ok(s_worker_t *w)
{
    return w->batch_api && !w->leaving && w->healthy;
}

bool llmq_broker_batch_pool(llmq_broker_core_t *self, const char *model,
                            const char *pool, char *pool_out, size_t pool_size,
                            char *provider_out, size_t provider_size)
{
    if (!model || !*model)
        return false;
    for (s_worker_t *w = (s_worker_t *)zhashx_first(self->workers); w;
         w = (s_worker_t *)zhashx_next(self->workers)) {
        if (!s_job_worker_ok(w) || !s_serves(model, pool, w))
            continue;
        snprintf(pool_out, pool_size, "%s", w->pool ? w->pool : "");
        snprintf(provider_out, provider_size, "%s",
                 w->provider ? w->provider : "");
        return true;
    }
    return false;
}

int llmq_broker_send_job(llmq_broker_core_t *self, const char *pool,
                         llmq_msg_t **msg_p)
{
    //  Round robin over the pool's candidates: job tasks use no credit, so
    //  spreading them is all the balancing they get.
    size_t count = 0;
    for (s_worker_t *w = (s_worker_t *)zhashx_first(self->workers); w;
         w = (s_worker_t *)zhashx_next(self->workers))
        if (s_job_worker_ok(w) &&
            streq(w->pool ? w->pool : "", pool ? pool : ""))
            count++;
    if (count == 0 || !*msg_p)
        return -1;
    size_t pick = (size_t)(self->job_rr++ % count);
    for (s_worker_t *w = (s_worker_t *)zhashx_first(self->workers); w;
         w = (s_worker_t *)zhashx_next(self->workers)) {
        if (!s_job_worker_ok(w) ||
            !streq(w->pool ? w->pool : "", pool ? pool : ""))
            continue;
        if (pick-- > 0)
            continue;
        llmq_msg_set_routing_id(*msg_p, w->rid);
        if (self->config.verbose)
            llmq_msg_print(*msg_p);
        //  A failed send destroys the message too: count it as lost, the
        //  manager re-issues the task after its timeout.
        if (llmq_msg_send(msg_p, self->backend))
            s_log(self, "warning", "job_send_failed",
                  LLMQ_LOG_STR("worker", w->name), s_END);
        return 0;
    }
    return -1;
}

//  --------------------------------------------------------------------------
//  Selftest: the broker actor in-process, with a client and fake workers as
//  DEALER sockets driven by the test itself.

//  Test helpers: a peer is a DEALER; t_send builds a message from a type
//  and lets the caller fill it; t_expect waits (heartbeating for the test
//  workers meanwhile) for the next message other than `hb`.

typedef struct {
    zsock_t *socks[8]; //  Test workers kept alive by heartbeats
    size_t count;
} s_t_alive_t;

static s_t_alive_t s_t_alive;

static void s_t_beat(void)
{
    for (size_t i = 0; i < s_t_alive.count; i++) {
        llmq_msg_t *hb = llmq_msg_new(LLMQ_MSG_HB);
        llmq_msg_send(&hb, s_t_alive.socks[i]);
    }
}

static zsock_t *s_t_peer(const char *endpoint, const char *identity)
{
    zsock_t *sock = zsock_new(ZMQ_DEALER);
    if (identity)
        zsock_set_identity(sock, identity);
    zsock_connect(sock, "%s", endpoint);
    return sock;
}

//  The fake workers beat every 100 ms while a test waits.
static void s_t_tick(void *arg)
{
    int64_t *next_beat = (int64_t *)arg;
    if (zclock_mono() >= *next_beat) {
        s_t_beat();
        *next_beat = zclock_mono() + 100;
    }
}

static llmq_msg_t *s_t_expect(zsock_t *sock, llmq_msg_type_t type, int timeout)
{
    int64_t next_beat = 0;
    llmq_msg_t *msg =
        llmq_msg_expect(sock, type, timeout, s_t_tick, &next_beat);
    if (!msg)
        printf("\n   no %s\n", llmq_msg_type_name(type));
    return msg;
}

//  True if nothing but heartbeats arrives within timeout ms.
static bool s_t_quiet(zsock_t *sock, int timeout)
{
    int64_t until = zclock_mono() + timeout;
    while (zclock_mono() < until) {
        s_t_beat();
        zmq_pollitem_t item = {zsock_resolve(sock), 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 50) <= 0)
            continue;
        llmq_msg_t *msg = llmq_msg_recv(sock);
        bool hb = msg && (llmq_msg_type(msg) == LLMQ_MSG_HB ||
                          llmq_msg_type(msg) == LLMQ_MSG_ACK);
        llmq_msg_destroy(&msg);
        if (!hb)
            return false;
    }
    return true;
}

static void s_t_req(zsock_t *client, const char *id, const char *model,
                    int64_t priority, int64_t deadline_ms, const char *body)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_REQ);
    llmq_msg_set_id(msg, id);
    llmq_msg_set_op(msg, "chat");
    llmq_msg_set_model(msg, model);
    if (priority)
        llmq_msg_set_priority(msg, priority);
    if (deadline_ms)
        llmq_msg_set_deadline_ms(msg, deadline_ms);
    static const uint8_t meta[] = {0x81, 0xa1, 'k', 0x07}; //  {"k": 7}
    llmq_msg_set_meta(msg, meta, sizeof(meta));
    //  A msgpack string payload; a long one to use the shared-frame path.
    char payload[300];
    size_t len = strlen(body);
    payload[0] = (char)0xd9;
    payload[1] = (char)len;
    memcpy(payload + 2, body, len);
    llmq_msg_set_payload_mem(msg, payload, len + 2);
    llmq_msg_send(&msg, client);
}

static void s_t_hello(zsock_t *worker, const char *name, const char *model,
                      int64_t capacity, const char *group, int64_t rpm)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_HELLO);
    llmq_msg_set_worker(msg, name);
    llmq_msg_set_pool(msg, "pool1");
    llmq_msg_set_provider(msg, "echo");
    const char *models[] = {model};
    llmq_msg_set_models(msg, models, 1);
    llmq_msg_set_capacity(msg, capacity);
    if (group)
        llmq_msg_set_limit_group(msg, group);
    if (rpm)
        llmq_msg_set_limits_rpm(msg, rpm);
    llmq_msg_set_version(msg, "test");
    llmq_msg_send(&msg, worker);
}

static void s_t_credit(zsock_t *worker, int64_t n)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_CREDIT);
    llmq_msg_set_n(msg, n);
    llmq_msg_send(&msg, worker);
}

//  Answer a dispatched req as an echo worker would: ok, payload back.
static void s_t_answer(zsock_t *worker, llmq_msg_t **req_p)
{
    llmq_msg_t *req = *req_p;
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(res, llmq_msg_id(req));
    llmq_msg_set_ok(res, true);
    llmq_msg_set_usage_total_tokens(res, 3);
    zframe_t *payload = llmq_msg_take_payload(req);
    llmq_msg_set_payload(res, &payload);
    llmq_msg_send(&res, worker);
    llmq_msg_destroy(req_p);
}

//  The payload of a message as the test body string.
static bool s_t_body_is(llmq_msg_t *msg, const char *body)
{
    zframe_t *payload = msg ? llmq_msg_payload(msg) : NULL;
    size_t len = strlen(body);
    return payload && zframe_size(payload) == len + 2 &&
           memcmp(zframe_data(payload) + 2, body, len) == 0;
}

static bool s_t_failed_with(llmq_msg_t *msg, const char *id, const char *code)
{
    bool ok = msg && !llmq_msg_ok(msg) && llmq_msg_id(msg) &&
              streq(llmq_msg_id(msg), id) && llmq_msg_error_code(msg) &&
              streq(llmq_msg_error_code(msg), code);
    if (!ok && msg) {
        printf("\n   expected %s error %s, got:", id, code);
        llmq_msg_print(msg);
    }
    return ok;
}

//  A test module: hands out five items once a client opened a "batch", and
//  tells that client `batch.status` when all five came back.
typedef struct {
    llmq_broker_core_t *core;
    zframe_t *client; //  Who sent batch.open
    int handed, done;
} s_t_module_t;

static void *s_t_module_create(llmq_broker_core_t *core, void *arg)
{
    (void)arg;
    s_t_module_t *self = (s_t_module_t *)calloc(1, sizeof(*self));
    if (self)
        self->core = core;
    return self;
}

static void s_t_module_destroy(void **state_p)
{
    s_t_module_t *self = (s_t_module_t *)*state_p;
    if (self) {
        zframe_destroy(&self->client);
        free(self);
        *state_p = NULL;
    }
}

static void s_t_module_client(void *state, llmq_msg_t **msg_p)
{
    s_t_module_t *self = (s_t_module_t *)state;
    zframe_destroy(&self->client);
    self->client = zframe_dup(llmq_msg_routing_id(*msg_p));
    llmq_msg_t *ack = llmq_msg_new(LLMQ_MSG_BATCH_ACK);
    llmq_msg_set_batch(ack, "b");
    llmq_msg_set_routing_id(ack, self->client);
    llmq_broker_reply(self->core, &ack);
    llmq_msg_destroy(msg_p);
}

static llmq_msg_t *s_t_module_next(void *state, llmq_broker_serves_fn *serves,
                                   void *serves_arg)
{
    s_t_module_t *self = (s_t_module_t *)state;
    if (!self->client || self->handed >= 5 || !serves("m1", NULL, serves_arg) ||
        serves("other-model", NULL, serves_arg))
        return NULL;
    llmq_msg_t *req = llmq_msg_new(LLMQ_MSG_REQ);
    char id[16];
    snprintf(id, sizeof(id), "item%d", self->handed++);
    llmq_msg_set_id(req, id);
    llmq_msg_set_op(req, "chat");
    llmq_msg_set_model(req, "m1");
    llmq_msg_set_payload_mem(req, "\xa4item", 5);
    return req;
}

static void s_t_module_result(void *state, llmq_msg_t **res_p)
{
    s_t_module_t *self = (s_t_module_t *)state;
    if (llmq_msg_ok(*res_p) && strncmp(llmq_msg_id(*res_p), "item", 4) == 0)
        self->done++;
    llmq_msg_destroy(res_p);
    if (self->done == 5) {
        llmq_msg_t *status = llmq_msg_new(LLMQ_MSG_BATCH_STATUS);
        llmq_msg_set_batch(status, "b");
        llmq_msg_set_state(status, "completed");
        llmq_msg_set_counts_done(status, self->done);
        llmq_msg_set_routing_id(status, self->client);
        llmq_broker_reply(self->core, &status);
    }
}

#include "llmq_check.h"
#define T_CHECK(cond) LLMQ_CHECK_OR(cond, goto done)

//  Delivery under churn (PROTOCOL.md 3.3), on a broker of its own: a
//  worker's `held` report, a resend attached to it without credit, the
//  ack of its result, a fresh request dispatched at once. Returns 0 if ok.
static int s_t_attach(void)
{
    int rc = -1;
    llmq_broker_config_t config;
    llmq_broker_config_defaults(&config);
    config.frontend = "tcp://127.0.0.1:*";
    config.backend = "tcp://127.0.0.1:*";
    config.heartbeat_ms = 100;
    config.recovery_ms = 60000;
    config.quiet = true;
    zactor_t *broker = zactor_new(llmq_broker, &config);
    char *fe = NULL, *be = NULL, *me = NULL;
    zsock_t *client = NULL, *w = NULL;
    llmq_msg_t *m = NULL;
    T_CHECK(broker && llmq_broker_endpoints(broker, &fe, &be, &me) == 0);
    client = s_t_peer(fe, "client-9");
    w = s_t_peer(be, "worker-w");
    s_t_alive.count = 0;
    s_t_alive.socks[s_t_alive.count++] = w;
    s_t_hello(w, "w", "m1", 4, NULL, 0);
    llmq_payload_t *pk = llmq_payload_new();
    llmq_payload_add_str(pk, "636c69656e742d39:x1"); //  hex("client-9"):x1
    zframe_t *keys = llmq_payload_frame(pk);
    llmq_payload_destroy(&pk);
    m = llmq_msg_new(LLMQ_MSG_HELD);
    llmq_msg_set_count(m, 1);
    llmq_msg_set_payload(m, &keys);
    llmq_msg_send(&m, w);
    //  The resend goes to w with no credit granted, marked as a resend.
    m = llmq_msg_new(LLMQ_MSG_REQ);
    llmq_msg_set_id(m, "x1");
    llmq_msg_set_op(m, "chat");
    llmq_msg_set_model(m, "m1");
    llmq_msg_set_resend(m, true);
    llmq_msg_set_payload_mem(m, "\xa1x", 2);
    llmq_msg_send(&m, client);
    T_CHECK((m = s_t_expect(w, LLMQ_MSG_REQ, 5000)));
    T_CHECK(llmq_msg_resend(m) && llmq_msg_rkey(m) &&
            streq(llmq_msg_rkey(m), "636c69656e742d39:x1"));
    T_CHECK(llmq_msg_deadline_ms(m) > 500000); //  the default deadline
    char bid[80];
    snprintf(bid, sizeof(bid), "%s", llmq_msg_id(m));
    s_t_answer(w, &m);
    T_CHECK((m = s_t_expect(client, LLMQ_MSG_RES, 5000)));
    T_CHECK(llmq_msg_ok(m) && streq(llmq_msg_id(m), "x1"));
    llmq_msg_destroy(&m);
    T_CHECK((m = s_t_expect(w, LLMQ_MSG_ACK, 5000)));
    T_CHECK(llmq_msg_ids_count(m) == 1 && streq(llmq_msg_ids_at(m, 0), bid));
    llmq_msg_destroy(&m);
    //  A fresh request is not parked by the recovery time.
    s_t_credit(w, 1);
    s_t_req(client, "x2", "m1", 0, 0, "fresh");
    T_CHECK((m = s_t_expect(w, LLMQ_MSG_REQ, 5000)));
    T_CHECK(!llmq_msg_resend(m) && s_t_body_is(m, "fresh"));
    llmq_msg_destroy(&m);
    rc = 0;
done:
    s_t_alive.count = 0;
    llmq_msg_destroy(&m);
    zsock_destroy(&client);
    zsock_destroy(&w);
    zactor_destroy(&broker);
    zstr_free(&fe);
    zstr_free(&be);
    zstr_free(&me);
    return rc;
}

//  The main selftest's state, from step to step: one broker, its client,
//  the fake workers, and the messages a step leaves for the next one. All
//  of it is freed by s_t_fx_fini, whatever step failed.
typedef struct {
    llmq_broker_config_t config;        //  The broker's configuration
    zactor_t *broker;                   //  The broker under test
    zactor_t *small;                    //  A second broker, with room for two
    char *frontend, *backend, *metrics; //  The broker's endpoints
    zsock_t *client;                    //  The client, "client-1"
    zsock_t *a, *b, *c, *d;             //  Fake workers
    llmq_msg_t *m, *m2, *m3;            //  Requests held by a step
} s_t_fx_t;

#define T_RET(cond) LLMQ_CHECK_RET(cond)

//  A body long enough to be shared rather than copied.
#define S_T_LONG_BODY                                                          \
    "first request body, long enough to be shared "                            \
    "rather than copied by the broker when it goes to the worker"

static void s_t_fx_fini(s_t_fx_t *fx)
{
    s_t_alive.count = 0;
    llmq_msg_destroy(&fx->m);
    llmq_msg_destroy(&fx->m2);
    llmq_msg_destroy(&fx->m3);
    zsock_destroy(&fx->client);
    zsock_destroy(&fx->a);
    zsock_destroy(&fx->b);
    zsock_destroy(&fx->c);
    zsock_destroy(&fx->d);
    zactor_destroy(&fx->small);
    zactor_destroy(&fx->broker);
    zstr_free(&fx->frontend);
    zstr_free(&fx->backend);
    zstr_free(&fx->metrics);
}

//  The client cancels id, which is answered `cancelled`.
static int s_t_cancel_req(s_t_fx_t *fx, const char *id)
{
    fx->m = llmq_msg_new(LLMQ_MSG_CANCEL);
    llmq_msg_set_id(fx->m, id);
    llmq_msg_send(&fx->m, fx->client);
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_RES, 5000)));
    T_RET(s_t_failed_with(fx->m, id, "cancelled"));
    llmq_msg_destroy(&fx->m);
    return 0;
}

//  True if the next `limits` on worker says rpm.
static bool s_t_limits_is(zsock_t *worker, int64_t rpm)
{
    llmq_msg_t *m = s_t_expect(worker, LLMQ_MSG_LIMITS, 5000);
    bool good = m && llmq_msg_limits_rpm(m) == rpm;
    llmq_msg_destroy(&m);
    return good;
}

//  ping -> pong; garbage gets bad_message, and the broker carries on;
//  batches are not there yet; no worker serves the model: not_found after
//  the wait.
static int s_t_basics(s_t_fx_t *fx)
{
    fx->m = llmq_msg_new(LLMQ_MSG_PING);
    llmq_msg_send(&fx->m, fx->client);
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_PONG, 5000)));
    T_RET(streq(llmq_msg_broker(fx->m), "llmq-broker"));
    llmq_msg_destroy(&fx->m);

    zstr_send(fx->client, "not msgpack");
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_ERROR, 5000)));
    T_RET(streq(llmq_msg_code(fx->m), "bad_message"));
    llmq_msg_destroy(&fx->m);

    fx->m = llmq_msg_new(LLMQ_MSG_BATCH_CLOSE);
    llmq_msg_set_batch(fx->m, "b1");
    llmq_msg_send(&fx->m, fx->client);
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_ERROR, 5000)));
    T_RET(streq(llmq_msg_code(fx->m), "invalid_request"));
    llmq_msg_destroy(&fx->m);

    s_t_req(fx->client, "q0", "nobody", 0, 0, "x");
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_RES, 5000)));
    T_RET(s_t_failed_with(fx->m, "q0", "not_found"));
    llmq_msg_destroy(&fx->m);
    return 0;
}

//  A worker must say hello first. Three requests against two credits: two
//  go out, the third waits. Leaves r3 dispatched in m, r2 in m2.
static int s_t_dispatch(s_t_fx_t *fx)
{
    fx->a = s_t_peer(fx->backend, "worker-a");
    s_t_credit(fx->a, 1);
    T_RET((fx->m = s_t_expect(fx->a, LLMQ_MSG_ERROR, 5000)));
    T_RET(streq(llmq_msg_message(fx->m), "hello first"));
    llmq_msg_destroy(&fx->m);
    s_t_hello(fx->a, "a", "m1", 2, NULL, 0);
    s_t_alive.socks[s_t_alive.count++] = fx->a;

    s_t_req(fx->client, "r1", "m1", 0, 0, S_T_LONG_BODY);
    s_t_req(fx->client, "r2", "m1", 0, 0, "second");
    s_t_req(fx->client, "r2", "m1", 0, 0, "second"); //  duplicate: ignored
    s_t_req(fx->client, "r3", "m1", 0, 0, "third");
    s_t_credit(fx->a, 2);
    T_RET((fx->m = s_t_expect(fx->a, LLMQ_MSG_REQ, 5000)));
    T_RET(s_t_body_is(fx->m, S_T_LONG_BODY));
    T_RET(llmq_msg_id(fx->m)[0] == 'r' && llmq_msg_attempt(fx->m) == 1);
    T_RET((fx->m2 = s_t_expect(fx->a, LLMQ_MSG_REQ, 5000)));
    T_RET(s_t_body_is(fx->m2, "second"));
    T_RET(s_t_quiet(fx->a, 200));
    s_t_answer(fx->a, &fx->m);
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_RES, 5000)));
    T_RET(llmq_msg_ok(fx->m) && streq(llmq_msg_id(fx->m), "r1") &&
          streq(llmq_msg_worker(fx->m), "a"));
    T_RET(s_t_body_is(fx->m, S_T_LONG_BODY));
    size_t size = 0;
    const uint8_t *meta = llmq_msg_meta(fx->m, &size);
    T_RET(meta && size == 4 && meta[3] == 0x07);
    llmq_msg_destroy(&fx->m);
    s_t_credit(fx->a, 1);
    T_RET((fx->m = s_t_expect(fx->a, LLMQ_MSG_REQ, 5000)));
    T_RET(s_t_body_is(fx->m, "third"));
    return 0;
}

//  Cancel: a dispatched request (r3, in m) is answered and its worker
//  told. The worker's late answer for it is dropped; r2 (m2) answered.
static int s_t_cancel_dispatched(s_t_fx_t *fx)
{
    char r3_bid[32];
    snprintf(r3_bid, sizeof(r3_bid), "%s", llmq_msg_id(fx->m));
    llmq_msg_destroy(&fx->m);
    T_RET(s_t_cancel_req(fx, "r3") == 0);
    T_RET((fx->m = s_t_expect(fx->a, LLMQ_MSG_CANCEL, 5000)));
    T_RET(streq(llmq_msg_id(fx->m), r3_bid));
    llmq_msg_destroy(&fx->m);
    fx->m = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(fx->m, r3_bid);
    llmq_msg_set_ok(fx->m, false);
    llmq_msg_set_failure(fx->m, LLMQ_ERR_CANCELLED, 0, "cancelled");
    llmq_msg_send(&fx->m, fx->a);
    s_t_answer(fx->a, &fx->m2); //  r2
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_RES, 5000)));
    T_RET(llmq_msg_ok(fx->m) && streq(llmq_msg_id(fx->m), "r2"));
    llmq_msg_destroy(&fx->m);
    return 0;
}

//  True if the status in msg counts `queued` requests and nworkers.
static bool s_t_status_is(llmq_msg_t *msg, int64_t queued, size_t nworkers)
{
    zframe_t *payload = llmq_msg_payload(msg);
    llmq_status_t *status =
        payload ? llmq_status_decode(zframe_data(payload), zframe_size(payload),
                                     NULL, 0)
                : NULL;
    if (!status)
        return false;
    int64_t seen = -1;
    for (size_t i = 0; i < status->ncounters; i++)
        if (streq(status->counters[i].name, "queued"))
            seen = status->counters[i].value;
    bool good = seen == queued && status->nworkers == nworkers;
    llmq_status_destroy(&status);
    return good;
}

//  A queued request cancelled; priorities; deadlines. No credit now.
//  Leaves "high" in m and "low" in m2, dispatched to a.
static int s_t_queued(s_t_fx_t *fx)
{
    s_t_req(fx->client, "c1", "m1", 0, 0, "cancel me");
    T_RET(s_t_cancel_req(fx, "c1") == 0);
    s_t_req(fx->client, "late", "m1", 0, 100, "deadline");
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_RES, 5000)));
    T_RET(s_t_failed_with(fx->m, "late", "deadline_exceeded"));
    llmq_msg_destroy(&fx->m);
    s_t_req(fx->client, "lo", "m1", 0, 0, "low");
    s_t_req(fx->client, "hi", "m1", 9, 0, "high");
    s_t_req(fx->client, "lo2", "m1", 0, 0, "low2");
    //  status shows them queued
    fx->m = llmq_msg_new(LLMQ_MSG_STATUS);
    llmq_msg_send(&fx->m, fx->client);
    T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_STATUS, 5000)));
    T_RET(s_t_status_is(fx->m, 3, 1));
    llmq_msg_destroy(&fx->m);
    s_t_credit(fx->a, 2);
    T_RET((fx->m = s_t_expect(fx->a, LLMQ_MSG_REQ, 5000)));
    T_RET(s_t_body_is(fx->m, "high"));
    T_RET((fx->m2 = s_t_expect(fx->a, LLMQ_MSG_REQ, 5000)));
    T_RET(s_t_body_is(fx->m2, "low"));
    return 0;
}

//  Worker a dies holding two requests: both go to worker b, attempt 2.
static int s_t_death(s_t_fx_t *fx)
{
    fx->b = s_t_peer(fx->backend, "worker-b");
    s_t_hello(fx->b, "b", "m1", 4, NULL, 0);
    s_t_credit(fx->b, 1);
    T_RET((fx->m3 = s_t_expect(fx->b, LLMQ_MSG_REQ, 5000)));
    T_RET(s_t_body_is(fx->m3, "low2"));
    llmq_msg_destroy(&fx->m);
    llmq_msg_destroy(&fx->m2);
    //  Now a goes silent: declared dead, its two requests go to b.
    s_t_alive.count = 0;
    s_t_alive.socks[s_t_alive.count++] = fx->b;
    s_t_credit(fx->b, 3);
    T_RET((fx->m = s_t_expect(fx->b, LLMQ_MSG_REQ, 20000)));
    T_RET(s_t_body_is(fx->m, "high") && llmq_msg_attempt(fx->m) == 2);
    T_RET((fx->m2 = s_t_expect(fx->b, LLMQ_MSG_REQ, 5000)));
    T_RET(s_t_body_is(fx->m2, "low") && llmq_msg_attempt(fx->m2) == 2);
    s_t_answer(fx->b, &fx->m);
    s_t_answer(fx->b, &fx->m2);
    s_t_answer(fx->b, &fx->m3);
    for (int i = 0; i < 3; i++) {
        T_RET((fx->m = s_t_expect(fx->client, LLMQ_MSG_RES, 5000)));
        const char *id = llmq_msg_id(fx->m);
        T_RET(llmq_msg_ok(fx->m) && streq(llmq_msg_worker(fx->m), "b"));
        T_RET(llmq_msg_attempt(fx->m) == (streq(id, "lo2") ? 1 : 2));
        llmq_msg_destroy(&fx->m);
    }
    return 0;
}

//  A worker that joins the same limit group halves the share; its bye
//  gives it back.
static int s_t_limit_group(s_t_fx_t *fx)
{
    fx->c = s_t_peer(fx->backend, "worker-c");
    fx->d = s_t_peer(fx->backend, "worker-d");
    s_t_hello(fx->c, "c", "m2", 1, "key1", 100);
    T_RET(s_t_limits_is(fx->c, 100));
    s_t_alive.socks[s_t_alive.count++] = fx->c;
    s_t_hello(fx->d, "d", "m2", 1, "key1", 80);
    T_RET(s_t_limits_is(fx->c, 40)); //  min(100, 80) / 2
    T_RET(s_t_limits_is(fx->d, 40));
    fx->m = llmq_msg_new(LLMQ_MSG_BYE);
    llmq_msg_send(&fx->m, fx->d);
    T_RET(s_t_limits_is(fx->c, 100));
    return 0;
}

//  Metrics are served. Overload, on a broker with room for two; drain: queued
//  requests are answered overloaded, then DRAINED.
static int s_t_overload(s_t_fx_t *fx)
{
    T_RET(*fx->metrics); //  Metrics are served.
    fx->config.max_queue = 2;
    fx->config.drain_ms = 50;
    fx->config.no_worker_wait_ms = 10000;
    fx->small = zactor_new(llmq_broker, &fx->config);
    char *fe = NULL, *be = NULL, *me = NULL;
    T_RET(llmq_broker_endpoints(fx->small, &fe, &be, &me) == 0);
    zsock_t *client2 = s_t_peer(fe, NULL);
    zstr_free(&fe);
    zstr_free(&be);
    zstr_free(&me);
    s_t_req(client2, "o1", "nobody", 0, 0, "x");
    s_t_req(client2, "o2", "nobody", 0, 0, "x");
    s_t_req(client2, "o3", "nobody", 0, 0, "x");
    llmq_msg_t *m = s_t_expect(client2, LLMQ_MSG_RES, 5000);
    bool good =
        s_t_failed_with(m, "o3", "overloaded") && llmq_msg_error_retryable(m);
    llmq_msg_destroy(&m);
    zstr_send(fx->small, "DRAIN");
    char *event = zstr_recv(fx->small);
    good = good && event && streq(event, "DRAINED");
    zstr_free(&event);
    for (int i = 0; i < 2 && good; i++) {
        m = s_t_expect(client2, LLMQ_MSG_RES, 5000);
        good =
            m && !llmq_msg_ok(m) && streq(llmq_msg_error_code(m), "overloaded");
        llmq_msg_destroy(&m);
    }
    zsock_destroy(&client2);
    T_RET(good);
    return 0;
}

//  The module test after batch.open: the worker answers five items, two
//  at a time (its credit); the client hears the batch is done.
static bool s_t_module_items(zsock_t *client3, zsock_t *worker)
{
    bool good = true;
    for (int i = 0; i < 5 && good; i++) {
        llmq_msg_t *m = s_t_expect(worker, LLMQ_MSG_REQ, 5000);
        good = m && llmq_msg_attempt(m) == 1;
        if (good) {
            s_t_answer(worker, &m);
            s_t_credit(worker, 1);
        }
        llmq_msg_destroy(&m);
    }
    llmq_msg_t *m =
        good ? s_t_expect(client3, LLMQ_MSG_BATCH_STATUS, 5000) : NULL;
    good = good && m && llmq_msg_counts_done(m) == 5;
    llmq_msg_destroy(&m);
    return good;
}

//  A module's items fill spare credit and come back to it.
static int s_t_module(s_t_fx_t *fx)
{
    static llmq_broker_module_t module = {.name = "test",
                                          .create = s_t_module_create,
                                          .destroy = s_t_module_destroy,
                                          .client_msg = s_t_module_client,
                                          .next_item = s_t_module_next,
                                          .item_result = s_t_module_result};
    llmq_broker_config_t mconfig = fx->config;
    mconfig.max_queue = 100;
    mconfig.module = &module;
    zactor_t *modular = zactor_new(llmq_broker, &mconfig);
    char *fe = NULL, *be = NULL, *me = NULL;
    bool good = llmq_broker_endpoints(modular, &fe, &be, &me) == 0;
    zsock_t *client3 = good ? s_t_peer(fe, NULL) : NULL;
    zsock_t *worker = good ? s_t_peer(be, "worker-mod") : NULL;
    if (good) {
        s_t_hello(worker, "mod", "m1", 2, NULL, 0);
        s_t_credit(worker, 2);
        llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_BATCH_OPEN);
        llmq_msg_set_batch(m, "b");
        llmq_msg_set_mode(m, "realtime");
        llmq_msg_set_model(m, "m1");
        llmq_msg_send(&m, client3);
        m = s_t_expect(client3, LLMQ_MSG_BATCH_ACK, 5000);
        good = m != NULL && s_t_module_items(client3, worker);
        llmq_msg_destroy(&m);
    }
    zsock_destroy(&client3);
    zsock_destroy(&worker);
    zactor_destroy(&modular);
    zstr_free(&fe);
    zstr_free(&be);
    zstr_free(&me);
    T_RET(good);
    return 0;
}

//  s_table_t against a model: items whose hashes collide in runs (few
//  distinct low bits), removed in random order through growth and
//  shrinking; every item present is found, no removed one is.
static int s_t_table(void)
{
    enum { N = 3000 };
    int rc = -1;
    s_table_t t = {NULL, 0, 0};
    static uint64_t hashes[N];
    static bool present[N];
    srand(7);
    for (int i = 0; i < N; i++) {
        hashes[i] = (uint64_t)(rand() % 50) << 40 | (uint64_t)(rand() % 9);
        present[i] = false;
    }
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++)
            if (!present[i] && rand() % 3) {
                T_CHECK(s_table_insert(&t, hashes[i], &hashes[i]) == 0);
                present[i] = true;
            }
        for (int i = 0; i < N; i++)
            if (present[i] && rand() % 4 == 0) {
                s_table_remove(&t, hashes[i], &hashes[i]);
                present[i] = false;
            }
        size_t count = 0;
        for (int i = 0; i < N; i++) {
            size_t at = hashes[i] & t.mask;
            void *item;
            bool found = false;
            while ((item = s_table_next(&t, hashes[i], &at)))
                found = found || item == &hashes[i];
            T_CHECK(found == present[i]);
            count += present[i];
        }
        T_CHECK(count == t.count);
    }
    for (int i = 0; i < N; i++)
        if (present[i])
            s_table_remove(&t, hashes[i], &hashes[i]);
    T_CHECK(t.count == 0 && t.mask + 1 == 64);
    rc = 0;
done:
    free(t.slots);
    return rc;
}

int llmq_broker_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_broker: ");
    int rc = -1;
    s_t_fx_t fx;
    memset(&fx, 0, sizeof fx);
    llmq_broker_config_defaults(&fx.config);
    fx.config.frontend = "tcp://127.0.0.1:*";
    fx.config.backend = "tcp://127.0.0.1:*";
    fx.config.metrics = "127.0.0.1:0";
    fx.config.heartbeat_ms = 100;
    //  The test's workers heartbeat only while the test waits on a socket
    //  (s_t_expect): dead_ms must exceed any stall between two waits, also
    //  under valgrind. The one death below waits for it with a deadline.
    fx.config.dead_ms = 5000;
    fx.config.no_worker_wait_ms = 200;
    fx.config.quiet = !verbose;
    fx.broker = zactor_new(llmq_broker, &fx.config);
    s_t_alive.count = 0;
    T_CHECK(fx.broker && llmq_broker_endpoints(fx.broker, &fx.frontend,
                                               &fx.backend, &fx.metrics) == 0);
    T_CHECK(strstr(fx.frontend, "tcp://127.0.0.1:") &&
            strstr(fx.metrics, "http://127.0.0.1:"));
    fx.client = s_t_peer(fx.frontend, "client-1");
    //  The steps, in order: each goes on from where the last one left.
    static int (*const steps[])(s_t_fx_t *) = {
        s_t_basics, s_t_dispatch,    s_t_cancel_dispatched, s_t_queued,
        s_t_death,  s_t_limit_group, s_t_overload,          s_t_module};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        T_CHECK(steps[i](&fx) == 0);
    T_CHECK(s_t_attach() == 0);
    T_CHECK(s_t_table() == 0);
    rc = 0;
done:
    s_t_fx_fini(&fx);
    if (verbose)
        printf("%s\n", rc == 0 ? "OK" : "FAILED");
    return rc;
}
