/*  main.c - llmq-broker: flags, signals, and the broker actor.

    Thin on purpose: everything the broker does is in llmq_broker.c so that
    tests can run it in-process. Here: parse flags (bad flags: exit 2), start
    the actor, print the `ready` line once bound, and turn SIGTERM/SIGINT
    into a bounded drain (exit 0). A second signal stops at once. SIGHUP
    reloads the routes file (PROTOCOL.md 3.6); a bad one at start: exit 2.
*/
#include "llmq_broker.h"
#include "llmq_batch_module.h"
#include "llmq.h"
#include "llmq_duration.h"
#include "llmq_log.h"
#include "llmq_route.h"

#include <getopt.h>
#include <stddef.h>
#include <signal.h>

static volatile sig_atomic_t s_signals = 0;
static volatile sig_atomic_t s_hangups = 0; //  SIGHUPs not yet passed on

static void s_on_hangup(int signum)
{
    (void)signum;
    s_hangups = 1;
}

static void s_on_signal(int signum)
{
    (void)signum;
    s_signals++;
}

//  The --help text.
static const char s_help[] =
    "Usage: llmq-broker [options]\n"
    "\n"
    "The llmq broker: clients connect a DEALER to the frontend, "
    "workers to\n"
    "the backend. Prints `ready llmq-broker frontend=.. backend=..` "
    "once bound.\n"
    "\n"
    "Options:\n"
    "  --frontend EP           client endpoint to bind (default "
    "tcp://127.0.0.1:5555;\n"
    "                          tcp://127.0.0.1:* picks a free port)\n"
    "  --backend EP            worker endpoint to bind (default "
    "tcp://127.0.0.1:5556)\n"
    "  --metrics ADDR          Prometheus metrics over HTTP on PORT or "
    "HOST:PORT\n"
    "                          (0 = off, the default; HOST:0 picks a "
    "free port)\n"
    "  --name NAME             broker name in pong and status (default "
    "llmq-broker)\n"
    "  --max-queue N           queued requests in all queues before "
    "`overloaded`\n"
    "                          (default 1000000)\n"
    "  --max-queue-bytes N     payload bytes queued in all queues before "
    "`overloaded`\n"
    "                          (default 2147483648; 0 = no cap)\n"
    "  --tenant-max-queue N    requests one tenant may have queued "
    "(default 200000;\n"
    "                          0 = no cap; a tenant: the client's CURVE key, "
    "else the\n"
    "                          `tenant` it declares, PROTOCOL.md 3.4)\n"
    "  --tenant-max-bytes N    payload bytes one tenant may have queued "
    "(default\n"
    "                          1073741824; 0 = no cap)\n"
    "  --tenant-max-inflight N requests one tenant may have in the broker, "
    "queued\n"
    "                          or at workers (default 0 = no cap)\n"
    "  --tenant-daily-cap USD  cost one tenant may spend per UTC day; past "
    "it, its\n"
    "                          requests get rate_limited until 00:00 UTC "
    "(default 0\n"
    "                          = no cap)\n"
    "  --no-fair-share         serve each priority in arrival order, not "
    "tenants in\n"
    "                          turn\n"
    "  --admin-key KEY         with CURVE: the client public key (Z85) that "
    "sees and\n"
    "                          cancels every batch\n"
    "  --admin-tenant NAME     without CURVE: the declared tenant that does "
    "(advisory)\n"
    "  --no-worker-wait-ms MS  how long a request for a model no "
    "worker serves\n"
    "                          waits for one to join before "
    "`not_found` (default 10000)\n"
    "  --drain-ms MS           on SIGTERM, how long to await in-flight "
    "work (default 10000)\n"
    "  --heartbeat-ms MS       heartbeat interval to workers (default "
    "1000)\n"
    "  --dead-ms MS            worker silence after which it is dead "
    "(default 3000)\n"
    "  --default-deadline MS   deadline of a request that sets none "
    "(default\n"
    "                          600000 = 10 min; 0 = none)\n"
    "  --recovery-ms MS        after start, resent requests wait this "
    "long for a\n"
    "                          worker that holds them (default: "
    "--dead-ms)\n"
    "  --client-timeout MS     a client that heartbeats and then is "
    "silent this\n"
    "                          long has gone: its requests are dropped "
    "(default\n"
    "                          10000; 0 = never)\n"
    "  --client-hwm N          replies queued for a client that does "
    "not read,\n"
    "                          at most (default 10000); past it they are "
    "dropped\n"
    "  --client-max-bytes N    reply bytes queued for one client, at "
    "most\n"
    "                          (default 67108864; 0 = no bound)\n"
    "  --cache FILE            response cache (PROTOCOL.md 3.7) in this "
    "SQLite\n"
    "                          file: deterministic requests (cache: true, "
    "or\n"
    "                          temperature 0) answered without a worker "
    "(default: off)\n"
    "  --cache-max-bytes N     answer bytes the cache keeps; least "
    "recently used\n"
    "                          evicted past it (default 268435456)\n"
    "  --cache-ttl DURATION    an answer older than this is a miss "
    "(default 24h)\n"
    "  --cache-per-tenant      tenants do not share answers (the tenant is "
    "part of\n"
    "                          the key; default: one cache for all)\n"
    "  --batch-db FILE         SQLite file of the durable batches "
    "(default\n"
    "                          ./llmq-batches.db; --batch-db none "
    "turns batches off)\n"
    "  --batch-threshold N     auto batches of at least N items go to "
    "a provider's\n"
    "                          Batch API when a batch_api pool serves "
    "the model\n"
    "                          (default 1000)\n"
    "  --batch-poll-ms MS      poll period of a running provider job "
    "(default 30000)\n"
    "  --batch-task-timeout-ms MS  a job task unanswered this long is "
    "re-issued\n"
    "                          (default 120000)\n"
    "  --batch-submit-grace-ms MS  a lookup miss resubmits a job only "
    "this long\n"
    "                          after its submit (default 1800000)\n"
    "  --batch-provider-price X  multiplier on provider-mode costs "
    "reported by\n"
    "                          workers (default 1.0: workers report "
    "the discount)\n"
    "  --batch-no-resubmit     provider lines that failed retryably or "
    "expired are\n"
    "                          reported as errors instead of rerun in "
    "realtime\n"
    "  --curve-cert PATH       CURVE on: the broker's secret "
    "certificate (from\n"
    "                          `llmq keygen`; env LLMQ_CURVE_CERT)\n"
    "  --client-keys DIR       public certificates of allowed clients "
    "(env\n"
    "                          LLMQ_CLIENT_KEYS; re-read when it "
    "changes)\n"
    "  --worker-keys DIR       public certificates of allowed workers "
    "(env\n"
    "                          LLMQ_WORKER_KEYS; re-read when it "
    "changes)\n"
    "  --routes FILE           model aliases, weights and fallback chains "
    "(YAML,\n"
    "                          PROTOCOL.md 3.6; env LLMQ_ROUTES); read "
    "again on\n"
    "                          SIGHUP and when it changes\n"
    "  --json-logs             log events as JSON lines on stderr\n"
    "  --quiet                 no event logs\n"
    "  --verbose               log every message (debugging)\n"
    "  --version               print the version and exit\n"
    "  --help, -h              this text\n"
    "Durations: a bare number is ms; a unit may be given: 500ms, 2s, "
    "1m, 1h.\n";

static void s_usage(FILE *out)
{
    fputs(s_help, out);
}

//  Parse a non-negative integer flag value; exit 2 on garbage.
static long long s_number(const char *flag, const char *text, long long min,
                          long long max)
{
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno || !*text || *end || value < min || value > max) {
        fprintf(stderr,
                "llmq-broker: %s wants a number in %lld..%lld, got '%s'\n",
                flag, min, max, text);
        exit(2);
    }
    return value;
}

//  Parse a duration flag (a bare number is ms; or 500ms, 2s, 1m: one
//  parser for every binary, include/llmq_duration.h); exit 2 on garbage.
static long long s_ms(const char *flag, const char *text, long long min,
                      long long max)
{
    int64_t ms = 0;
    if (llmq_duration_parse(text, &ms, NULL) || ms < min || ms > max) {
        fprintf(stderr,
                "llmq-broker: %s wants a duration in %lld..%lld ms (a bare "
                "number is ms; or 500ms, 2s, 1m), got '%s'\n",
                flag, min, max, text);
        exit(2);
    }
    return (long long)ms;
}

//  Everything the command line sets.
typedef struct {
    llmq_broker_config_t broker;   //  the broker actor's config
    llmq_batch_module_arg_t batch; //  the batch manager's
    const char *batch_db;          //  --batch-db ("none": no batches)
} s_args_t;

//  How a flag's value is read into the s_args_t field at off.
typedef enum {
    K_STR,     //  const char *
    K_SIZE,    //  size_t, a number in lo..hi
    K_I64,     //  int64_t, a number in lo..hi
    K_INT_MS,  //  int, a duration in lo..hi ms
    K_I64_MS,  //  int64_t, a duration in lo..hi ms
    K_PRICE,   //  double in 0..100
    K_TRUE,    //  bool set (no argument)
    K_FALSE,   //  bool cleared (no argument)
    K_VERSION, //  print the version, exit 0
    K_HELP     //  print the usage, exit 0
} s_kind_t;

typedef struct {
    const char *name; //  long option
    s_kind_t kind;
    long long lo, hi; //  bounds of a number or duration
    size_t off;       //  field in s_args_t
} s_flag_t;

//  Where a flag's value goes: a broker config field, a batch config field.
#define B_(field) offsetof(s_args_t, broker.field)
#define M_(field) offsetof(s_args_t, batch.config.field)

static const s_flag_t s_flags[] = {
    {"frontend", K_STR, 0, 0, B_(frontend)},
    {"backend", K_STR, 0, 0, B_(backend)},
    {"metrics", K_STR, 0, 0, B_(metrics)},
    {"name", K_STR, 0, 0, B_(name)},
    {"max-queue", K_SIZE, 1, 100000000, B_(max_queue)},
    {"max-queue-bytes", K_SIZE, 0, 1LL << 50, B_(max_queue_bytes)},
    {"tenant-max-queue", K_SIZE, 0, 100000000, B_(tenant_max_queue)},
    {"tenant-max-bytes", K_SIZE, 0, 1LL << 50, B_(tenant_max_bytes)},
    {"tenant-max-inflight", K_SIZE, 0, 100000000, B_(tenant_max_inflight)},
    {"tenant-daily-cap", K_PRICE, 0, 1000000000, B_(tenant_daily_usd)},
    {"no-fair-share", K_TRUE, 0, 0, B_(no_fair_share)},
    {"admin-key", K_STR, 0, 0, B_(admin_key)},
    {"admin-tenant", K_STR, 0, 0, B_(admin_tenant)},
    {"no-worker-wait-ms", K_INT_MS, 0, 86400000, B_(no_worker_wait_ms)},
    {"drain-ms", K_INT_MS, 0, 86400000, B_(drain_ms)},
    {"heartbeat-ms", K_INT_MS, 10, 600000, B_(heartbeat_ms)},
    {"dead-ms", K_INT_MS, 30, 3600000, B_(dead_ms)},
    {"default-deadline", K_INT_MS, 0, 2000000000, B_(default_deadline_ms)},
    {"recovery-ms", K_INT_MS, 0, 3600000, B_(recovery_ms)},
    {"client-timeout", K_INT_MS, 0, 86400000, B_(client_timeout_ms)},
    {"client-hwm", K_SIZE, 1, 10000000, B_(client_hwm)},
    {"client-max-bytes", K_SIZE, 0, (long long)1 << 40, B_(client_max_bytes)},
    {"cache", K_STR, 0, 0, B_(cache_path)},
    {"cache-max-bytes", K_SIZE, 1, 1LL << 50, B_(cache_max_bytes)},
    {"cache-ttl", K_I64_MS, 1, 86400000LL * 3650, B_(cache_ttl_ms)},
    {"cache-per-tenant", K_TRUE, 0, 0, B_(cache_per_tenant)},
    {"batch-db", K_STR, 0, 0, offsetof(s_args_t, batch_db)},
    {"batch-threshold", K_I64, 1, 1000000000, M_(auto_threshold)},
    {"batch-poll-ms", K_I64_MS, 10, 86400000, M_(poll_interval_ms)},
    {"batch-task-timeout-ms", K_I64_MS, 100, 86400000, M_(task_timeout_ms)},
    {"batch-submit-grace-ms", K_I64_MS, 0, 86400000LL * 30,
     M_(submit_grace_ms)},
    {"batch-provider-price", K_PRICE, 0, 100, M_(provider_price)},
    {"batch-no-resubmit", K_FALSE, 0, 0, M_(resubmit_failed)},
    {"curve-cert", K_STR, 0, 0, B_(curve_cert)},
    {"client-keys", K_STR, 0, 0, B_(client_keys)},
    {"worker-keys", K_STR, 0, 0, B_(worker_keys)},
    {"routes", K_STR, 0, 0, B_(routes)},
    {"json-logs", K_TRUE, 0, 0, B_(json_logs)},
    {"quiet", K_TRUE, 0, 0, B_(quiet)},
    {"verbose", K_TRUE, 0, 0, B_(verbose)},
    {"version", K_VERSION, 0, 0, 0},
    {"help", K_HELP, 0, 0, 0},
};
#define S_N_FLAGS (sizeof(s_flags) / sizeof(s_flags[0]))
#undef B_
#undef M_

//  Reads one flag's value into args. Returns -1 to go on, or the exit code
//  (0 after --help / --version, 2 on a bad value).
static int s_apply_flag(s_args_t *args, const s_flag_t *f, const char *arg)
{
    void *field = (char *)args + f->off;
    char flag[64];
    snprintf(flag, sizeof(flag), "--%s", f->name);
    switch (f->kind) {
    case K_STR:
        *(const char **)field = arg;
        break;
    case K_SIZE:
        *(size_t *)field = (size_t)s_number(flag, arg, f->lo, f->hi);
        break;
    case K_I64:
        *(int64_t *)field = s_number(flag, arg, f->lo, f->hi);
        break;
    case K_INT_MS:
        *(int *)field = (int)s_ms(flag, arg, f->lo, f->hi);
        break;
    case K_I64_MS:
        *(int64_t *)field = s_ms(flag, arg, f->lo, f->hi);
        break;
    case K_PRICE: {
        char *end = NULL;
        double price = strtod(arg, &end);
        if (!*arg || *end ||
            !(price >= (double)f->lo && price <= (double)f->hi)) {
            fprintf(stderr,
                    "llmq-broker: %s wants a number in %lld..%lld, got '%s'\n",
                    flag, f->lo, f->hi, arg);
            return 2;
        }
        *(double *)field = price;
        break;
    }
    case K_TRUE:
    case K_FALSE:
        *(bool *)field = f->kind == K_TRUE;
        break;
    case K_VERSION:
        printf("llmq-broker %s\n", LLMQ_VERSION_STRING);
        return 0;
    case K_HELP:
        s_usage(stdout);
        return 0;
    }
    return -1;
}

//  Parses the command line into args. Returns -1 to go on, or the exit
//  code (0 after --help / --version, 2 on a usage error).
static int s_parse_flags(s_args_t *args, int argc, char *argv[])
{
    struct option options[S_N_FLAGS + 1];
    for (size_t i = 0; i < S_N_FLAGS; i++) {
        s_kind_t k = s_flags[i].kind;
        bool bare = k >= K_TRUE;
        options[i] = (struct option){s_flags[i].name,
                                     bare ? no_argument : required_argument,
                                     NULL, 256 + (int)i};
    }
    options[S_N_FLAGS] = (struct option){NULL, 0, NULL, 0};
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        if (opt == 'h') {
            s_usage(stdout);
            return 0;
        }
        if (opt < 256 || opt >= 256 + (int)S_N_FLAGS) {
            fprintf(stderr, "llmq-broker: unknown or incomplete option '%s'\n",
                    argv[optind - 1]);
            s_usage(stderr);
            return 2;
        }
        int rc = s_apply_flag(args, &s_flags[opt - 256], optarg);
        if (rc >= 0)
            return rc;
    }
    if (optind < argc) {
        fprintf(stderr, "llmq-broker: unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }
    if (args->broker.dead_ms <= args->broker.heartbeat_ms) {
        fprintf(stderr,
                "llmq-broker: --dead-ms must be larger than --heartbeat-ms\n");
        return 2;
    }
    return -1;
}

//  A routes file that does not load is a usage error: say why, exit 2
//  (the actor would only say that it could not start). Returns 0 or -1.
static int s_routes_check(const char *path)
{
    if (!path || !*path)
        return 0;
    char err[600];
    llmq_route_t *routes = llmq_route_new();
    int rc = routes ? llmq_route_load(routes, path, err, sizeof(err)) : -1;
    if (rc)
        fprintf(stderr, "llmq-broker: --routes %s\n",
                routes ? err : "out of memory");
    llmq_route_destroy(&routes);
    return rc;
}

//  Our own handlers: CZMQ's would make the actor's sockets fail with EINTR
//  instead of letting us drain.
static void s_catch_signals(void)
{
    zsys_handler_set(NULL);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = s_on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    action.sa_handler = s_on_hangup;
    sigaction(SIGHUP, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
}

//  Prints the `ready` line with the bound endpoints. Returns 0, or -1 if
//  the broker did not start.
static int s_ready(zactor_t *broker)
{
    char *frontend = NULL, *backend = NULL, *metrics = NULL;
    if (!broker ||
        llmq_broker_endpoints(broker, &frontend, &backend, &metrics)) {
        fprintf(stderr, "llmq-broker: could not start (see the log above)\n");
        return -1;
    }
    printf("ready llmq-broker frontend=%s backend=%s%s%s\n", frontend, backend,
           *metrics ? " metrics=" : "", metrics);
    fflush(stdout);
    zstr_free(&frontend);
    zstr_free(&backend);
    zstr_free(&metrics);
    return 0;
}

//  Waits for a signal, then drains within the bound (drain_ms + 5 s) and
//  returns the exit code: 0, or 1 after a second signal.
static int s_run(zactor_t *broker, int drain_ms)
{
    zpoller_t *poller = zpoller_new(broker, NULL);
    bool draining = false;
    int64_t give_up = 0;
    int rc = 0;
    while (true) {
        void *which = zpoller_wait(poller, 100);
        if (which == broker) {
            char *event = zstr_recv(broker);
            bool done = event && streq(event, "DRAINED");
            zstr_free(&event);
            if (done)
                break;
        }
        if (s_hangups) {
            s_hangups = 0;
            zstr_send(broker, "ROUTES");
        }
        if (s_signals && !draining) {
            draining = true;
            give_up = zclock_mono() + drain_ms + 5000;
            zstr_send(broker, "DRAIN");
        }
        if (s_signals > 1 || (draining && zclock_mono() > give_up)) {
            rc = s_signals > 1 ? 1 : 0;
            break;
        }
    }
    zpoller_destroy(&poller);
    return rc;
}

int main(int argc, char *argv[])
{
    s_args_t args;
    llmq_broker_config_defaults(&args.broker);
    args.batch_db = "llmq-batches.db";
    llmq_batch_module_arg_defaults(&args.batch, args.batch_db);
    args.broker.curve_cert = getenv("LLMQ_CURVE_CERT");
    args.broker.client_keys = getenv("LLMQ_CLIENT_KEYS");
    args.broker.worker_keys = getenv("LLMQ_WORKER_KEYS");
    args.broker.routes = getenv("LLMQ_ROUTES");
    int code = s_parse_flags(&args, argc, argv);
    if (code >= 0)
        return code;
    if (args.broker.routes && !*args.broker.routes)
        args.broker.routes = NULL; //  LLMQ_ROUTES= (empty): none
    if (s_routes_check(args.broker.routes))
        return 2;

    //  Durable batches (docs/BATCHES.md): the batch manager as the broker's
    //  plug-in, with provider mode through the broker's batch_api workers.
    llmq_broker_module_t bmod;
    if (!streq(args.batch_db, "none")) {
        args.batch.path = args.batch_db;
        args.batch.pool_lookup = llmq_broker_batch_pool;
        args.batch.send_worker = llmq_broker_send_job;
        llmq_batch_module_init(&bmod, &args.batch);
        args.broker.module = &bmod;
    }
    s_catch_signals();
    //  The library's lines (batch store, codec) in the broker's format too.
    llmq_log_setup(NULL, "llmq-broker", args.broker.json_logs, LLMQ_LOG_INFO);
    zactor_t *broker = zactor_new(llmq_broker, &args.broker);
    if (s_ready(broker)) {
        zactor_destroy(&broker);
        return 1;
    }
    int rc = s_run(broker, args.broker.drain_ms);
    zactor_destroy(&broker);
    return rc;
}
