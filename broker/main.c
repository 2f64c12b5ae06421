/*  main.c - llmq-broker: flags, signals, and the broker actor.

    Thin on purpose: everything the broker does is in llmq_broker.c so that
    tests can run it in-process. Here: parse flags (bad flags: exit 2), start
    the actor, print the `ready` line once bound, and turn SIGTERM/SIGINT
    into a bounded drain (exit 0). A second signal stops at once.
*/
#include "llmq_broker.h"
#include "llmq_batch_module.h"
#include "llmq.h"
#include "llmq_duration.h"
#include "llmq_log.h"

#include <getopt.h>
#include <signal.h>

static volatile sig_atomic_t s_signals = 0;

static void s_on_signal(int signum)
{
    (void)signum;
    s_signals++;
}

static void s_usage(FILE *out)
{
    fprintf(out,
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
            "  --json-logs             log events as JSON lines on stderr\n"
            "  --quiet                 no event logs\n"
            "  --verbose               log every message (debugging)\n"
            "  --version               print the version and exit\n"
            "  --help, -h              this text\n"
            "Durations: a bare number is ms; a unit may be given: 500ms, 2s, "
            "1m, 1h.\n");
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

int main(int argc, char *argv[])
{
    llmq_broker_config_t config;
    llmq_broker_config_defaults(&config);
    const char *batch_db = "llmq-batches.db";
    llmq_batch_module_arg_t barg;
    llmq_batch_module_arg_defaults(&barg, batch_db);
    config.curve_cert = getenv("LLMQ_CURVE_CERT");
    config.client_keys = getenv("LLMQ_CLIENT_KEYS");
    config.worker_keys = getenv("LLMQ_WORKER_KEYS");
    enum {
        O_FRONTEND = 1,
        O_BACKEND,
        O_METRICS,
        O_NAME,
        O_MAX_QUEUE,
        O_WAIT,
        O_DRAIN,
        O_HB,
        O_DEAD,
        O_JSON,
        O_QUIET,
        O_VERBOSE,
        O_VERSION,
        O_HELP,
        O_BDB,
        O_BTHRESH,
        O_BPOLL,
        O_BTASK,
        O_BGRACE,
        O_BPRICE,
        O_BNORESUB,
        O_CERT,
        O_CKEYS,
        O_WKEYS,
        O_DEFDEADLINE,
        O_RECOVERY
    };
    static const struct option options[] = {
        {"frontend", required_argument, NULL, O_FRONTEND},
        {"backend", required_argument, NULL, O_BACKEND},
        {"metrics", required_argument, NULL, O_METRICS},
        {"name", required_argument, NULL, O_NAME},
        {"max-queue", required_argument, NULL, O_MAX_QUEUE},
        {"no-worker-wait-ms", required_argument, NULL, O_WAIT},
        {"drain-ms", required_argument, NULL, O_DRAIN},
        {"heartbeat-ms", required_argument, NULL, O_HB},
        {"dead-ms", required_argument, NULL, O_DEAD},
        {"default-deadline", required_argument, NULL, O_DEFDEADLINE},
        {"recovery-ms", required_argument, NULL, O_RECOVERY},
        {"batch-db", required_argument, NULL, O_BDB},
        {"batch-threshold", required_argument, NULL, O_BTHRESH},
        {"batch-poll-ms", required_argument, NULL, O_BPOLL},
        {"batch-task-timeout-ms", required_argument, NULL, O_BTASK},
        {"batch-submit-grace-ms", required_argument, NULL, O_BGRACE},
        {"batch-provider-price", required_argument, NULL, O_BPRICE},
        {"batch-no-resubmit", no_argument, NULL, O_BNORESUB},
        {"curve-cert", required_argument, NULL, O_CERT},
        {"client-keys", required_argument, NULL, O_CKEYS},
        {"worker-keys", required_argument, NULL, O_WKEYS},
        {"json-logs", no_argument, NULL, O_JSON},
        {"quiet", no_argument, NULL, O_QUIET},
        {"verbose", no_argument, NULL, O_VERBOSE},
        {"version", no_argument, NULL, O_VERSION},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
        switch (opt) {
        case O_FRONTEND:
            config.frontend = optarg;
            break;
        case O_BACKEND:
            config.backend = optarg;
            break;
        case O_METRICS:
            config.metrics = optarg;
            break;
        case O_NAME:
            config.name = optarg;
            break;
        case O_MAX_QUEUE:
            config.max_queue =
                (size_t)s_number("--max-queue", optarg, 1, 100000000);
            break;
        case O_WAIT:
            config.no_worker_wait_ms =
                (int)s_ms("--no-worker-wait-ms", optarg, 0, 86400000);
            break;
        case O_DRAIN:
            config.drain_ms = (int)s_ms("--drain-ms", optarg, 0, 86400000);
            break;
        case O_HB:
            config.heartbeat_ms =
                (int)s_ms("--heartbeat-ms", optarg, 10, 600000);
            break;
        case O_DEAD:
            config.dead_ms = (int)s_ms("--dead-ms", optarg, 30, 3600000);
            break;
        case O_DEFDEADLINE:
            config.default_deadline_ms =
                (int)s_ms("--default-deadline", optarg, 0, 2000000000);
            break;
        case O_RECOVERY:
            config.recovery_ms = (int)s_ms("--recovery-ms", optarg, 0, 3600000);
            break;
        case O_BDB:
            batch_db = optarg;
            break;
        case O_BTHRESH:
            barg.config.auto_threshold =
                s_number("--batch-threshold", optarg, 1, 1000000000);
            break;
        case O_BPOLL:
            barg.config.poll_interval_ms =
                s_ms("--batch-poll-ms", optarg, 10, 86400000);
            break;
        case O_BTASK:
            barg.config.task_timeout_ms =
                s_ms("--batch-task-timeout-ms", optarg, 100, 86400000);
            break;
        case O_BGRACE:
            barg.config.submit_grace_ms =
                s_ms("--batch-submit-grace-ms", optarg, 0, 86400000LL * 30);
            break;
        case O_BPRICE: {
            char *end = NULL;
            double price = strtod(optarg, &end);
            if (!*optarg || *end || !(price >= 0 && price <= 100)) {
                fprintf(stderr,
                        "llmq-broker: --batch-provider-price wants a number in "
                        "0..100, got '%s'\n",
                        optarg);
                return 2;
            }
            barg.config.provider_price = price;
            break;
        }
        case O_BNORESUB:
            barg.config.resubmit_failed = false;
            break;
        case O_CERT:
            config.curve_cert = optarg;
            break;
        case O_CKEYS:
            config.client_keys = optarg;
            break;
        case O_WKEYS:
            config.worker_keys = optarg;
            break;
        case O_JSON:
            config.json_logs = true;
            break;
        case O_QUIET:
            config.quiet = true;
            break;
        case O_VERBOSE:
            config.verbose = true;
            break;
        case O_VERSION:
            printf("llmq-broker %s\n", LLMQ_VERSION_STRING);
            return 0;
        case O_HELP:
        case 'h':
            s_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "llmq-broker: unknown or incomplete option '%s'\n",
                    argv[optind - 1]);
            s_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "llmq-broker: unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }
    if (config.dead_ms <= config.heartbeat_ms) {
        fprintf(stderr,
                "llmq-broker: --dead-ms must be larger than --heartbeat-ms\n");
        return 2;
    }

    //  Durable batches (docs/BATCHES.md): the batch manager as the broker's
    //  plug-in, with provider mode through the broker's batch_api workers.
    llmq_broker_module_t bmod;
    if (!streq(batch_db, "none")) {
        barg.path = batch_db;
        barg.pool_lookup = llmq_broker_batch_pool;
        barg.send_worker = llmq_broker_send_job;
        llmq_batch_module_init(&bmod, &barg);
        config.module = &bmod;
    }

    //  Our own handlers: CZMQ's would make the actor's sockets fail with EINTR
    //  instead of letting us drain.
    zsys_handler_set(NULL);
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = s_on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);

    //  The library's lines (batch store, codec) in the broker's format too.
    llmq_log_setup(NULL, "llmq-broker", config.json_logs, LLMQ_LOG_INFO);
    zactor_t *broker = zactor_new(llmq_broker, &config);
    char *frontend = NULL, *backend = NULL, *metrics = NULL;
    if (!broker ||
        llmq_broker_endpoints(broker, &frontend, &backend, &metrics)) {
        fprintf(stderr, "llmq-broker: could not start (see the log above)\n");
        zactor_destroy(&broker);
        return 1;
    }
    printf("ready llmq-broker frontend=%s backend=%s%s%s\n", frontend, backend,
           *metrics ? " metrics=" : "", metrics);
    fflush(stdout);
    zstr_free(&frontend);
    zstr_free(&backend);
    zstr_free(&metrics);

    //  Wait for a signal, then drain within the bound and leave.
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
        if (s_signals && !draining) {
            draining = true;
            give_up = zclock_mono() + config.drain_ms + 5000;
            zstr_send(broker, "DRAIN");
        }
        if (s_signals > 1 || (draining && zclock_mono() > give_up)) {
            rc = s_signals > 1 ? 1 : 0;
            break;
        }
    }
    zpoller_destroy(&poller);
    zactor_destroy(&broker);
    return rc;
}
