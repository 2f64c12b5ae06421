/*  main.c - the `llmq` command line: run, chat, status, ping.

    `llmq run IN.jsonl -o OUT.jsonl` is the main job: it streams every input
    line through the broker with a window of outstanding requests, appends
    each result to OUT as it arrives (one whole line per write, so a kill
    leaves a valid prefix), and when the run ends rewrites OUT in input
    order (temp file + rename). A rerun skips custom_ids already in OUT.
    With no --broker and no broker answering at the default endpoint, it
    starts an embedded local cluster (llmq_cluster) and stops it at exit.

    Exit codes (documented in --help and client/README.md):
      0  every line ok          1  some lines failed (error lines written)
      2  usage or config error  3  broker unreachable or other fatal error
      4  run: --max-cost reached; the lines not sent are not in OUT (resume)
    130 interrupted (SIGINT/SIGTERM); OUT stays valid and resumable.
*/
#include "llmq.h"
#include "llmq_cluster.h"
#include "llmq_duration.h"
#include "llmq_jsonl.h"
#include "llmq_progress.h"
#include "llmq_runner.h"

#include <czmq.h>
#include <errno.h>
#include <getopt.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_OK 0
#define EXIT_FAILED_LINES 1
#define EXIT_USAGE 2
#define EXIT_FATAL 3
#define EXIT_COST_CAP 4
#define EXIT_INTERRUPTED 130

static volatile sig_atomic_t s_interrupted = 0;

static void s_on_signal(int signum)
{
    (void)signum;
    s_interrupted = 1;
}

/*  Catch SIGINT/SIGTERM ourselves (not CZMQ's handler, which would set
    zsys_interrupted): CZMQ installs s_on_signal without SA_RESTART, so
    blocking calls return EINTR and the command winds down, stopping its
    cluster. After zsys_init, which would install CZMQ's own. */
static void s_install_signals(void)
{
    zsys_init();
    zsys_handler_set(s_on_signal);
    signal(SIGPIPE, SIG_IGN);
}

/*  Options shared by the commands. */
typedef struct {
    const char *broker;     /* --broker, or NULL */
    const char *model;      /* --model, or NULL */
    const char *config;     /* --config, or NULL */
    const char *provider;   /* --provider for the embedded cluster */
    const char *base_url;   /* --base-url for the embedded cluster */
    const char *output;     /* run: -o */
    int workers;            /* embedded cluster workers */
    int capacity;           /* embedded cluster per-worker capacity */
    int64_t sim_latency_ms; /* embedded llmq-sim latency */
    int concurrency;        /* run: window */
    int max_dispatches;     /* broker dispatch attempts per request */
    int64_t deadline_ms;    /* per-request deadline */
    int64_t timeout_ms;     /* broker liveness */
    int64_t give_up_ms;     /* fail when the broker is silent this long */
    int64_t batch_poll_ms;  /* embedded broker: provider poll period */
    double max_cost_usd;    /* run: stop sending at this cost; 0: no cap */
    bool quiet;             /* no progress bar, no summary */
    bool retry_failed;      /* run: redo error lines of OUT */
    bool verbose;           /* log more, children's stderr through */
    bool json;              /* status: raw JSON */
    bool no_stream;         /* chat: wait for the whole answer */
    const char *system;     /* chat: system prompt */
    int max_tokens;         /* chat: max_tokens */
    const char *mode;       /* batch, run: auto | realtime | provider */
    const char *batch_db;   /* embedded broker's batch database, or NULL */
    bool detach;            /* batch submit: print the id and leave */
    const char *curve_cert; /* CURVE: own secret certificate */
    const char *broker_key; /* CURVE: the broker's public key or cert */
    const char *tenant;     /* declared tenant (advisory, without CURVE) */
    bool cache;             /* run: ask for the response cache (3.7) */
} s_opts_t;

/*  The options, one table: what kind of value each takes and the field
    of s_opts_t it sets. getopt_long returns S_ID + its index. */
typedef enum {
    S_TEXT,  /* a value: const char * */
    S_FLAG,  /* no value: bool, set */
    S_COUNT, /* a non-negative integer: int */
    S_MS,    /* a duration: int64_t ms */
    S_USD,   /* an amount of US dollars, > 0: double */
    S_HELP   /* --help */
} s_kind_t;

#define S_AT(field) offsetof(s_opts_t, field)
#define S_ID 1000

typedef struct {
    const char *name; /* --name */
    s_kind_t kind;    /* its value */
    size_t field;     /* S_AT(field) */
} s_option_t;

static const s_option_t s_options[] = {
    {"broker", S_TEXT, S_AT(broker)},
    {"model", S_TEXT, S_AT(model)},
    {"config", S_TEXT, S_AT(config)},
    {"provider", S_TEXT, S_AT(provider)},
    {"base-url", S_TEXT, S_AT(base_url)},
    {"workers", S_COUNT, S_AT(workers)},
    {"capacity", S_COUNT, S_AT(capacity)},
    {"sim-latency-ms", S_MS, S_AT(sim_latency_ms)},
    {"output", S_TEXT, S_AT(output)},
    {"concurrency", S_COUNT, S_AT(concurrency)},
    {"max-attempts", S_COUNT, S_AT(max_dispatches)},
    {"max-dispatches", S_COUNT, S_AT(max_dispatches)},
    {"batch-poll-ms", S_MS, S_AT(batch_poll_ms)},
    {"deadline-ms", S_MS, S_AT(deadline_ms)},
    {"timeout", S_MS, S_AT(timeout_ms)},
    {"give-up", S_MS, S_AT(give_up_ms)},
    {"max-cost", S_USD, S_AT(max_cost_usd)},
    {"quiet", S_FLAG, S_AT(quiet)},
    {"retry-failed", S_FLAG, S_AT(retry_failed)},
    {"verbose", S_FLAG, S_AT(verbose)},
    {"json", S_FLAG, S_AT(json)},
    {"no-stream", S_FLAG, S_AT(no_stream)},
    {"system", S_TEXT, S_AT(system)},
    {"max-tokens", S_COUNT, S_AT(max_tokens)},
    {"mode", S_TEXT, S_AT(mode)},
    {"detach", S_FLAG, S_AT(detach)},
    {"curve-cert", S_TEXT, S_AT(curve_cert)},
    {"broker-key", S_TEXT, S_AT(broker_key)},
    {"tenant", S_TEXT, S_AT(tenant)},
    {"cache", S_FLAG, S_AT(cache)},
    {"help", S_HELP, 0},
};
#define S_OPTIONS (sizeof s_options / sizeof s_options[0])

static const char *s_usage_main =
    "usage: llmq <command> [options]\n"
    "\n"
    "Commands:\n"
    "  run IN.jsonl -o OUT.jsonl   run every line of IN through the broker, "
    "write OUT\n"
    "                              (--mode provider|auto|realtime: as one "
    "durable batch)\n"
    "  chat \"prompt\"               ask one question, stream the answer\n"
    "  status                      workers, queues and counters of a broker\n"
    "  ping                        check that a broker answers\n"
    "  batch submit FILE           durable broker-side batch: send FILE, "
    "wait, write OUT\n"
    "  batch status ID             a batch's state, mode, counts, tokens, "
    "cost\n"
    "  batch results ID -o OUT     wait for a batch and write its results\n"
    "  batch wait ID               wait until a batch is finished\n"
    "  batch cancel ID             cancel a batch (at the provider too)\n"
    "  batch list                  the broker's batches\n"
    "  keygen NAME                 write a CURVE keypair: NAME (public) and "
    "NAME_secret\n"
    "\n"
    "Options: llmq <command> --help (or -h).  llmq --version prints the "
    "version.\n"
    "With no --broker (and no LLMQ_ENDPOINT), run, chat and batch submit use "
    "the\n"
    "broker at " LLMQ_DEFAULT_ENDPOINT
    " if one answers, else start an embedded local\n"
    "cluster (broker + workers; the provider: OPENAI_API_KEY/OPENAI_BASE_URL, "
    "else\n"
    "ANTHROPIC_API_KEY/ANTHROPIC_BASE_URL, else the bundled llmq-sim).\n"
    "Durations: a bare number is ms, or with a unit: 500ms, 2s, 1m.\n"
    "\n"
    "Exit codes: 0 ok; 1 some lines/requests failed; 2 usage or config error;\n"
    "3 broker unreachable or other fatal error; 4 run: --max-cost reached;\n"
    "130 interrupted.\n";

#define S_USAGE_CURVE                                                          \
    "  --curve-cert PATH    CURVE: this client's secret certificate (env\n"    \
    "                       LLMQ_CURVE_CERT; made by `llmq keygen NAME`)\n"    \
    "  --broker-key KEY     CURVE: the broker's public key, Z85 text or its\n" \
    "                       public certificate file (env LLMQ_BROKER_KEY)\n"   \
    "  --tenant NAME        the tenant this client declares without CURVE\n"   \
    "                       (advisory; env LLMQ_TENANT; PROTOCOL.md 3.4)\n"

static const char *s_usage_cluster =
    "Broker and embedded cluster:\n"
    "  --broker EP          broker frontend (default: $LLMQ_ENDPOINT, "
    "else " LLMQ_DEFAULT_ENDPOINT "\n"
    "                       if it answers, else an embedded local cluster)\n"
    "  --model M            model (default: the input's, else the cluster's:\n"
    "                       gpt-4o-mini for openai, sim-model for the "
    "simulator)\n"
    "  --workers N          embedded cluster: worker processes (default 4)\n"
    "  --capacity N         embedded cluster: requests in flight per worker\n"
    "  --provider P         embedded cluster: openai, anthropic, echo, sim\n"
    "                       (default: openai if OPENAI_API_KEY is set, else "
    "sim)\n"
    "  --base-url URL       embedded cluster: provider URL (default "
    "OPENAI_BASE_URL)\n"
    "  --config FILE        embedded cluster: llmq-worker YAML config "
    "(provider,\n"
    "                       base_url, models, limits, pricing; see "
    "examples/llmq.yaml)\n"
    "  --sim-latency-ms D   embedded llmq-sim latency (default 50)\n"
    "  --batch-poll-ms D    embedded broker: poll period of a provider batch\n"
    "                       (default 30s)\n" S_USAGE_CURVE
    "  --timeout D          broker liveness: reconnect and resend after D of\n"
    "                       silence (default 3000 ms)\n"
    "  --verbose            log reconnects; children's logs to stderr\n"
    "  --help               this help\n";

static void s_help_run(void)
{
    printf("usage: llmq run IN.jsonl -o OUT.jsonl [options]\n\n"
           "Input lines: OpenAI Batch API {custom_id, method, url, body} "
           "(url:\n"
           "/v1/chat/completions, /v1/completions, /v1/embeddings), or "
           "{\"prompt\": ...},\n"
           "or {\"messages\": [...]}, or plain text (one prompt per line). A "
           "missing\n"
           "custom_id is \"line-<n>\". Output: OpenAI Batch output lines {id, "
           "custom_id,\n"
           "response {status_code, request_id, body}, error}, appended as "
           "results\n"
           "arrive, rewritten in input order at the end. A failed line is an "
           "error\n"
           "line. Rerunning skips custom_ids already in OUT (resume).\n\n"
           "Run options:\n"
           "  -o, --output OUT     output file (required; its directory is "
           "created;\n"
           "                       \"-\": stdout, lines as they finish). IN "
           "\"-\": stdin.\n"
           "                       IN and OUT must be different files; "
           "custom_ids unique\n"
           "  --concurrency N      requests outstanding at once (default 64)\n"
           "  --max-dispatches N   broker dispatch attempts per request "
           "(--max-attempts:\n"
           "                       deprecated alias)\n"
           "  --deadline-ms D      per-request deadline\n"
           "  --retry-failed       on resume, run error lines of OUT again\n"
           "  --cache              every line may be answered from the "
           "broker's\n"
           "                       response cache (`cache: true`; without it "
           "only\n"
           "                       temperature 0 lines are; PROTOCOL.md 3.7). "
           "Needs a\n"
           "                       broker run with --cache FILE (the embedded "
           "one has none)\n"
           "  --mode M             run the file as one durable broker batch "
           "(auto,\n"
           "                       realtime, provider: see llmq batch --help) "
           "and wait\n"
           "                       with a progress display of its states. "
           "With no\n"
           "                       broker, the embedded one keeps the batch "
           "in "
           "OUT.llmq-\n"
           "                       batch.db (./llmq-batches.db for -o -): "
           "rerun the same\n"
           "                       command after an interrupt to resume the "
           "SAME batch\n"
           "                       (at the provider too); removed when OUT is "
           "written\n"
           "  --give-up D          exit 3 if no broker answers for D (default "
           "300s; 0:\n"
           "                       never; a bare number is ms)\n"
           "  --max-cost USD       stop sending once this run's answers cost "
           "USD (as\n"
           "                       priced by the workers); the lines in "
           "flight finish,\n"
           "                       the others are left out of OUT: rerun "
           "without the\n"
           "                       cap (or a higher one) to resume; exit 4. "
           "Overshoot:\n"
           "                       at most one window (--concurrency) of "
           "requests\n"
           "  --quiet              no progress bar and no summary\n\n%s\n"
           "Exit codes: 0 all lines ok; 1 some lines failed; 2 usage/config "
           "error;\n"
           "3 broker unreachable or fatal; 4 --max-cost reached (rerun to "
           "resume);\n"
           "130 interrupted (rerun to resume).\n",
           s_usage_cluster);
}

static void s_help_batch(void)
{
    printf("usage: llmq batch submit FILE [--mode auto|realtime|provider] "
           "[--detach]\n"
           "                         [--model M] [-o OUT.jsonl]\n"
           "       llmq batch status ID [--json]\n"
           "       llmq batch results ID -o OUT.jsonl\n"
           "       llmq batch wait ID\n"
           "       llmq batch cancel ID\n"
           "       llmq batch list\n\n"
           "A batch lives in the broker (SQLite): it survives client "
           "disconnects and\n"
           "broker restarts. submit sends FILE's lines (as for llmq run; one "
           "model and\n"
           "one op per batch), prints the batch id on stdout, then (without "
           "--detach)\n"
           "shows the batch's state and counts until it is finished and "
           "writes "
           "the\n"
           "results, in input order, in the OpenAI Batch output format to OUT "
           "(default\n"
           "FILE.out.jsonl). results waits for the batch in the same way. "
           "Modes: realtime\n"
           "(items dispatched like requests, behind interactive ones), "
           "provider (the\n"
           "provider's Batch API through a worker pool with batch_api: half "
           "price, up\n"
           "to 24 h), auto (provider for large batches when a pool supports "
           "it; the\n"
           "default). Usage and cost are shown per batch, Batch API discount "
           "applied.\n\n"
           "  --mode M             auto (default), realtime, provider\n"
           "  --detach             submit: print the id and exit (needs a "
           "broker)\n"
           "  --model M            model of every item (default: the "
           "input's, else the\n"
           "                       broker's first worker's)\n"
           "  -o, --output OUT     results file\n"
           "  --json               status: one JSON line\n"
           "  --broker EP          broker frontend (default $LLMQ_ENDPOINT, "
           "else %s;\n"
           "                       submit with no broker: an embedded "
           "cluster, its batch\n"
           "                       database in OUT.llmq-batch.db, so the same "
           "command\n"
           "                       resumes the same batch; see llmq run "
           "--help)\n"
           "  --quiet              no progress display\n"
           "  --help               this help\n\n"
           "Exit codes: 0 ok; 1 some items failed (or the batch was "
           "cancelled/expired);\n"
           "2 usage error; 3 broker unreachable; 130 interrupted (the batch "
           "goes on).\n",
           LLMQ_DEFAULT_ENDPOINT);
}

static void s_help(const char *command)
{
    if (!command) {
        printf("%s", s_usage_main);
        return;
    }
    if (streq(command, "run"))
        s_help_run();
    else if (streq(command, "batch"))
        s_help_batch();
    else if (streq(command, "chat")) {
        printf("usage: llmq chat \"prompt\" [options]\n\n"
               "Streams the answer to stdout as it is generated.\n\n"
               "Chat options:\n"
               "  --system TEXT        system prompt\n"
               "  --max-tokens N       max_tokens\n"
               "  --no-stream          wait for the whole answer\n\n%s",
               s_usage_cluster);
    } else if (streq(command, "status")) {
        printf(
            "usage: llmq status [--broker EP] [--json]\n\n"
            "Prints the broker's workers, queues and counters as tables.\n"
            "  --broker EP          broker frontend (default %s)\n"
            "  --json               print the raw status JSON\n" S_USAGE_CURVE
            "  --help               this help\n",
            LLMQ_DEFAULT_ENDPOINT);
    } else if (streq(command, "ping")) {
        printf(
            "usage: llmq ping [--broker EP] [--timeout D]\n\n"
            "Pings the broker; prints its name, version and the round trip.\n"
            "Exit 0 if it answered, 3 if not.\n"
            "  --broker EP          broker frontend (default %s)\n"
            "  --timeout D          how long to wait (default 3000 ms; or "
            "2s)\n" S_USAGE_CURVE "  --help               this help\n",
            LLMQ_DEFAULT_ENDPOINT);
    }
}

/*  Parse a non-negative integer option; -1 on error. */
static long s_number(const char *text, const char *name)
{
    char *end = NULL;
    long value = strtol(text, &end, 10);
    if (!*text || *end || value < 0) {
        fprintf(stderr, "llmq: %s wants a non-negative integer, not '%s'\n",
                name, text);
        return -1;
    }
    return value;
}

/*  Parse an amount of US dollars for option --name (--max-cost): a finite
    number > 0. Returns 0 or -1. */
static int s_usd(const char *text, const char *name, double *usd_p)
{
    char *end = NULL;
    double value = strtod(text, &end);
    if (!*text || *end || !isfinite(value) || value <= 0) {
        fprintf(stderr, "llmq: --%s wants an amount of USD above 0, not '%s'\n",
                name, text);
        return -1;
    }
    *usd_p = value;
    return 0;
}

/*  Parse a duration option (a bare number is ms; or 500ms, 2s, 1m: the
    parser every llmq binary shares). --give-up took seconds before: a bare
    number below 1000 there is most likely meant as seconds, so say how it
    is read. Returns 0 or -1. */
static int s_duration(const char *text, const char *name, bool was_seconds,
                      int64_t *ms_p)
{
    bool bare = false;
    if (llmq_duration_parse(text, ms_p, &bare) || *ms_p > INT32_MAX) {
        fprintf(stderr,
                "llmq: %s wants a duration (a bare number is ms; or 500ms, "
                "2s, 1m), not '%s'\n",
                name, text);
        return -1;
    }
    if (was_seconds && bare && *ms_p > 0 && *ms_p < 1000)
        fprintf(stderr,
                "llmq: warning: %s %s is %s ms (durations are in ms; write "
                "%ss for seconds)\n",
                name, text, text, text);
    return 0;
}

/*  The option getopt_long returned as c (S_ID + index, or a short
    option's letter), or NULL: an unknown option. */
static const s_option_t *s_option(int c)
{
    const char *name = c == 'o'   ? "output"
                       : c == 'q' ? "quiet"
                       : c == 'h' ? "help"
                                  : NULL;
    for (size_t i = 0; i < S_OPTIONS; i++)
        if (c == S_ID + (int)i || (name && streq(s_options[i].name, name)))
            return &s_options[i];
    return NULL;
}

/*  Set the field of option from value; name: the option as given.
    Returns 0, or -1 (a bad value, said on stderr). */
static int s_set(const s_option_t *option, const char *value, const char *name,
                 s_opts_t *opts)
{
    char *field = (char *)opts + option->field;
    long n = 0;
    int64_t ms = 0;
    switch (option->kind) {
    case S_TEXT:
        *(const char **)field = value;
        break;
    case S_FLAG:
        *(bool *)field = true;
        break;
    case S_COUNT:
        if ((n = s_number(value, name)) < 0)
            return -1;
        if (streq(option->name, "max-attempts"))
            fprintf(stderr, "llmq: --max-attempts is deprecated: it is "
                            "--max-dispatches (broker dispatches; the "
                            "worker's --max-attempts counts HTTP "
                            "attempts)\n");
        *(int *)field = (int)n;
        break;
    case S_MS:
        if (s_duration(value, name, streq(option->name, "give-up"), &ms) < 0)
            return -1;
        *(int64_t *)field = ms;
        break;
    case S_USD:
        return s_usd(value, option->name, (double *)field);
    default:
        break;
    }
    return 0;
}

/*  Parse options for a command; positional arguments stay in argv from
 *first_p on. Returns 0, 1 (help printed), or -1 (usage error). */
static int s_parse(const char *command, int argc, char **argv, s_opts_t *opts,
                   int *first_p)
{
    struct option long_options[S_OPTIONS + 1];
    memset(long_options, 0, sizeof long_options);
    for (size_t i = 0; i < S_OPTIONS; i++) {
        bool value = s_options[i].kind != S_FLAG && s_options[i].kind != S_HELP;
        long_options[i] = (struct option){
            s_options[i].name, value ? required_argument : no_argument, NULL,
            S_ID + (int)i};
    }
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "o:hq", long_options, NULL)) != -1) {
        const s_option_t *option = s_option(c);
        if (option && option->kind == S_HELP) {
            s_help(command);
            return 1;
        }
        if (!option) {
            fprintf(stderr,
                    "llmq %s: unknown option '%s' (see llmq %s --help)\n",
                    command, argv[optind - 1], command);
            return -1;
        }
        if (s_set(option, optarg, argv[optind - 1], opts))
            return -1;
    }
    if (opts->workers > 64) {
        fprintf(stderr, "llmq: --workers is at most 64\n");
        return -1;
    }
    *first_p = optind;
    return 0;
}

//  --------------------------------------------------------------------------
//  Connecting: the given broker, the default one, or an embedded cluster

typedef struct {
    llmq_client_t *client;    /* connected client */
    llmq_cluster_t *cluster;  /* embedded cluster, or NULL */
    llmq_cluster_info_t info; /* the cluster's endpoint, provider ... */
    char *model;              /* default model for lines without one */
    bool simulated;           /* results come from llmq-sim */
} s_conn_t;

static void s_conn_close(s_conn_t *conn)
{
    llmq_client_destroy(&conn->client);
    llmq_cluster_destroy(&conn->cluster);
    free(conn->model);
    conn->model = NULL;
}

/*  Learn the default model and whether the provider is simulated from the
    broker's status: the first worker's first model. */
static void s_learn_from_status(s_conn_t *conn)
{
    cJSON *status = llmq_client_status(conn->client, 2000);
    cJSON *worker = NULL;
    cJSON_ArrayForEach(worker, cJSON_GetObjectItem(status, "workers"))
    {
        cJSON *provider = cJSON_GetObjectItem(worker, "provider");
        if (cJSON_IsString(provider) && streq(provider->valuestring, "sim"))
            conn->simulated = true;
        cJSON *model =
            cJSON_GetArrayItem(cJSON_GetObjectItem(worker, "models"), 0);
        if (!conn->model && cJSON_IsString(model))
            conn->model = strdup(model->valuestring);
    }
    cJSON_Delete(status);
}

/*  A client of endpoint with the CURVE keys of opts (or none: curve
    false, for the embedded cluster). NULL when the endpoint or the keys
    are bad (reason printed). */
static llmq_client_t *s_client_new(const s_opts_t *opts, const char *endpoint,
                                   bool curve)
{
    llmq_client_options_t copts = {0};
    copts.tenant = opts->tenant;
    if (curve) {
        copts.curve_cert = opts->curve_cert;
        copts.broker_key = opts->broker_key;
    }
    char err[512] = "";
    llmq_client_t *client =
        llmq_client_new_with(endpoint, &copts, err, sizeof(err));
    if (!client)
        fprintf(stderr, "llmq: %s\n", err);
    return client;
}

/*  What to say when a broker stays silent: with CURVE, a refused key
    looks exactly like that. */
static const char *s_silence_hint(const s_opts_t *opts)
{
    return opts->curve_cert && *opts->curve_cert
               ? " (with CURVE: check --broker-key, and that the broker "
                 "allows this client's key)"
               : "";
}

/*  Start an embedded cluster serving models (the models the input names)
    besides the default one. Returns 0 or an exit code. */
static int s_start_cluster(const s_opts_t *opts, s_conn_t *conn,
                           const char *const *models, size_t models_count)
{
    if (s_interrupted)
        return EXIT_INTERRUPTED;
    llmq_cluster_opts_t copts = {.workers = opts->workers,
                                 .capacity = opts->capacity,
                                 .provider = opts->provider,
                                 .base_url = opts->base_url,
                                 .model = opts->model,
                                 .models = models,
                                 .models_count = models_count,
                                 .config = opts->config,
                                 .sim_latency_ms = (int)opts->sim_latency_ms,
                                 .verbose = opts->verbose,
                                 .batch_db = opts->batch_db,
                                 .batch_poll_ms = (int)opts->batch_poll_ms};
    char err[512] = "";
    conn->cluster = llmq_cluster_new(&copts, err, sizeof(err));
    if (!conn->cluster) {
        if (s_interrupted)
            return EXIT_INTERRUPTED;
        bool config_error = errno == EINVAL;
        fprintf(stderr, "llmq: cannot start the local cluster: %s\n", err);
        return config_error ? EXIT_USAGE : EXIT_FATAL;
    }
    llmq_cluster_info(conn->cluster, &conn->info);
    conn->simulated = conn->info.simulated;
    conn->model = strdup(conn->info.model);
    if (!opts->quiet)
        fprintf(stderr,
                "llmq: started a local cluster: broker %s, %d workers, "
                "provider %s%s, model %s (broker name llmq-local-%d)\n",
                conn->info.endpoint, opts->workers > 0 ? opts->workers : 4,
                conn->info.provider,
                conn->simulated ? " (llmq-sim, SIMULATED results)" : "",
                conn->model, (int)getpid());
    return 0;
}

/*  The broker to use: --broker, $LLMQ_ENDPOINT, or the default endpoint
    if a broker answers there (else NULL: start a cluster). */
static const char *s_endpoint(const s_opts_t *opts, bool allow_cluster)
{
    const char *endpoint = opts->broker;
    if (!endpoint && getenv("LLMQ_ENDPOINT") && *getenv("LLMQ_ENDPOINT"))
        endpoint = getenv("LLMQ_ENDPOINT");
    if (!endpoint) {
        //  Is a broker already listening at the default address?
        llmq_client_t *probe = s_client_new(opts, LLMQ_DEFAULT_ENDPOINT, true);
        if (probe && llmq_client_ping(probe, 300, NULL) >= 0)
            endpoint = LLMQ_DEFAULT_ENDPOINT;
        llmq_client_destroy(&probe);
    }
    if (!endpoint && !allow_cluster)
        endpoint = LLMQ_DEFAULT_ENDPOINT;
    return endpoint;
}

/*  Returns 0 or an exit code. allow_cluster: start one if no broker;
    models: the models the input names, for the cluster's workers. */
static int s_connect(const s_opts_t *opts, s_conn_t *conn, bool allow_cluster,
                     const char *const *models, size_t models_count)
{
    const char *endpoint = s_endpoint(opts, allow_cluster);
    if (!endpoint) {
        int rc = s_start_cluster(opts, conn, models, models_count);
        if (rc)
            return rc;
        endpoint = conn->info.endpoint;
    }
    conn->client = s_client_new(opts, endpoint, !conn->cluster);
    if (!conn->client)
        return EXIT_USAGE;
    llmq_client_set_verbose(conn->client, opts->verbose);
    if (opts->timeout_ms > 0)
        llmq_client_set_timeout(conn->client, (int)opts->timeout_ms);
    if (opts->give_up_ms >= 0)
        llmq_client_set_give_up(conn->client, (int)opts->give_up_ms);
    int wait = opts->timeout_ms > 0 ? (int)opts->timeout_ms : 5000;
    if (llmq_client_ping(conn->client, wait, NULL) < 0) {
        if (s_interrupted)
            return EXIT_INTERRUPTED;
        fprintf(stderr, "llmq: broker %s does not answer (waited %d ms)%s\n",
                endpoint, wait, s_silence_hint(opts));
        return EXIT_FATAL;
    }
    if (!conn->cluster)
        s_learn_from_status(conn);
    if (opts->model) {
        free(conn->model);
        conn->model = strdup(opts->model);
    }
    if (!conn->model)
        conn->model = strdup("gpt-4o-mini");
    return 0;
}

//  --------------------------------------------------------------------------
//  The files of a run: checked before anything is written or sent

/*  OUT's directory is created, and OUT must not be IN: the same device and
    inode (the same file, or a symlink or hard link to it) would be
    overwritten by the results. "-" is stdin / stdout. Returns 0 or
    EXIT_USAGE. */
static int s_prepare_output(const char *command, const char *input,
                            const char *output)
{
    if (streq(output, "-"))
        return 0;
    struct stat in_st, out_st;
    bool have_in = streq(input, "-") ? fstat(STDIN_FILENO, &in_st) == 0
                                     : stat(input, &in_st) == 0;
    if (have_in && stat(output, &out_st) == 0 &&
        in_st.st_dev == out_st.st_dev && in_st.st_ino == out_st.st_ino) {
        fprintf(stderr,
                "llmq %s: %s and %s are the same file (same device and "
                "inode): the results would overwrite the input; choose "
                "another -o\n",
                command, input, output);
        return EXIT_USAGE;
    }
    char *copy = strdup(output);
    const char *dir = copy ? dirname(copy) : ".";
    struct stat dir_st;
    int rc = 0;
    if (stat(dir, &dir_st) != 0 && zsys_dir_create("%s", dir) != 0) {
        fprintf(stderr, "llmq %s: cannot create the directory %s of %s: %s\n",
                command, dir, output, strerror(errno));
        rc = EXIT_USAGE;
    }
    free(copy);
    return rc;
}

/*  Print text's lines (a reason of llmq_runner), each as
    "llmq COMMAND: line". */
static void s_say(const char *command, const char *text)
{
    while (*text) {
        size_t size = strcspn(text, "\n");
        fprintf(stderr, "llmq %s: %.*s\n", command, (int)size, text);
        text += size + (text[size] == '\n');
    }
}

/*  custom_ids match results to requests: two lines with one id cannot
    both be answered. Returns 0 or EXIT_USAGE (before anything is sent). */
static int s_check_duplicates(const char *command, zlistx_t *items)
{
    char err[4096] = "";
    if (llmq_runner_check_ids(items, err, sizeof err) == 0)
        return 0;
    s_say(command, err);
    return EXIT_USAGE;
}

/*  OUT already answers every one of total lines (a rerun of a finished
    run): say so. Returns the exit code of that run. */
static int s_say_complete(const char *output, size_t total, size_t failed)
{
    fprintf(stderr,
            "llmq: %s is already complete: %zu lines, %zu ok, %zu failed; "
            "nothing to run%s\n",
            output, total, total - failed, failed,
            failed ? " (--retry-failed runs the failed lines again)" : "");
    return failed ? EXIT_FAILED_LINES : EXIT_OK;
}

/*  True when OUT already answers every item (a rerun of a finished run):
    says so and sets *rc_p to 0, or 1 if some of those lines are errors. */
static bool s_output_complete(s_opts_t *opts, zlistx_t *items,
                              const char *output, int *rc_p)
{
    size_t failed = 0;
    if (!llmq_runner_complete(items, output, opts->retry_failed, &failed))
        return false;
    *rc_p = s_say_complete(output, zlistx_size(items), failed);
    return true;
}

//  --------------------------------------------------------------------------
//  llmq run: the engine is llmq_runner (IN, OUT, resume, window, retries);
//  here are the connection, the progress, the cluster's health, messages

static int s_batch_submit(s_opts_t *opts, const char *input, const char *output,
                          bool detach, bool stable);

/*  The state of one realtime `llmq run`. */
typedef struct {
    s_opts_t *opts;            /* the command's options */
    llmq_runner_t *runner;     /* the engine */
    s_conn_t conn;             /* the broker, or an embedded cluster */
    llmq_progress_t *progress; /* progress bar and summary */
    int64_t give_up_ms;        /* no broker for this long: stop */
    uint64_t reconnects;       /* client reconnects seen so far */
    int dead_workers;          /* embedded workers that exited */
    bool cluster_died;         /* the embedded broker or sim exited */
    bool capped;               /* --max-cost reached (noted on the bar) */
} s_run_t;

static void s_run_destroy(s_run_t *run)
{
    llmq_progress_destroy(&run->progress);
    llmq_runner_destroy(&run->runner);
    s_conn_close(&run->conn);
}

/*  Every finished line counts in the progress. */
static void s_run_on_line(const char *custom_id, const llmq_result_t *result,
                          void *arg)
{
    (void)custom_id;
    llmq_progress_add(((s_run_t *)arg)->progress, result);
}

/*  The runner of the command: reads IN, keeps OUT's whole lines (resume),
    opens OUT for appending. Returns 0 or an exit code. */
static int s_run_new(s_run_t *run, const char *input)
{
    s_opts_t *opts = run->opts;
    llmq_runner_config_t config = {.input = input,
                                   .output = opts->output,
                                   .retry_failed = opts->retry_failed,
                                   .model = opts->model,
                                   .window = opts->concurrency,
                                   .max_cost_usd = opts->max_cost_usd,
                                   .on_line = s_run_on_line,
                                   .on_line_arg = run};
    config.request.max_attempts = opts->max_dispatches;
    config.request.deadline_ms = opts->deadline_ms;
    config.request.cache = opts->cache;
    char err[4096] = "";
    run->runner = llmq_runner_new(&config, err, sizeof err);
    if (run->runner)
        return 0;
    int rc = errno == EINVAL ? EXIT_USAGE : EXIT_FATAL;
    s_say("run", err);
    return rc;
}

/*  Connect (the embedded cluster serving the models the lines name) and
    start the runner on the client. Returns 0 or an exit code. */
static int s_run_connect(s_run_t *run)
{
    s_opts_t *opts = run->opts;
    const char *models[256];
    size_t count = llmq_runner_models(run->runner, models, 256);
    int rc = s_connect(opts, &run->conn, true, models, count);
    if (rc)
        return rc;
    run->give_up_ms = opts->give_up_ms >= 0 ? opts->give_up_ms : 300000;
    llmq_client_set_give_up(run->conn.client, (int)run->give_up_ms);
    if (llmq_runner_start(run->runner, run->conn.client, run->conn.model))
        return EXIT_FATAL;
    return 0;
}

/*  An embedded cluster nobody restarts: a dead broker or sim ends the run
    (OUT stays resumable); a dead worker leaves the others to carry on.
    Reconnects are shown as notes. */
static void s_run_watch(s_run_t *run)
{
    s_conn_t *conn = &run->conn;
    const char *dead = conn->cluster ? llmq_cluster_dead(conn->cluster) : NULL;
    if (dead) {
        llmq_progress_clear(run->progress);
        fprintf(stderr, "llmq run: the local cluster's %s exited (logs: %s)\n",
                dead, conn->info.log_dir);
        int workers = run->opts->workers > 0 ? run->opts->workers : 4;
        if (!strncmp(dead, "worker", 6) && ++run->dead_workers < workers)
            llmq_progress_note(run->progress, "a local worker exited");
        else
            run->cluster_died = true;
    }
    llmq_client_stats_t stats;
    llmq_client_stats(conn->client, &stats);
    if (stats.reconnects != run->reconnects) {
        run->reconnects = stats.reconnects;
        llmq_progress_note(run->progress, "broker silent: reconnected, resent");
    }
    llmq_runner_stats_t rstats;
    llmq_runner_stats(run->runner, &rstats);
    if (rstats.capped && !run->capped) {
        run->capped = true;
        llmq_progress_note(run->progress, "--max-cost reached: finishing the "
                                          "requests in flight");
    }
}

/*  Step the runner until every line is finished, it stops, the cluster
    dies or a signal comes. Returns 0 or an exit code (OUT holds every
    finished line either way). */
static int s_run_loop(s_run_t *run)
{
    int step = 1;
    while (step > 0 && !s_interrupted && !run->cluster_died) {
        step = llmq_runner_step(run->runner, 100);
        s_run_watch(run);
        llmq_progress_draw(run->progress, false);
    }
    llmq_runner_stats_t stats;
    llmq_runner_stats(run->runner, &stats);
    if (stats.retried && run->opts->verbose)
        fprintf(stderr, "llmq run: %zu overloaded answers retried\n",
                stats.retried);
    int rc = EXIT_OK;
    if (stats.unreachable || run->cluster_died) {
        llmq_progress_clear(run->progress);
        if (run->cluster_died)
            fprintf(stderr,
                    "llmq run: stopping; rerun the same command to resume\n");
        else
            fprintf(stderr,
                    "llmq run: no broker answered for %.1f s, giving up; "
                    "rerun the same command to resume\n",
                    (double)run->give_up_ms / 1000);
        rc = EXIT_FATAL;
    }
    if (s_interrupted) {
        llmq_progress_clear(run->progress);
        fprintf(stderr,
                "llmq run: interrupted; %s holds the finished lines, rerun "
                "the same command to resume\n",
                run->opts->output);
        rc = EXIT_INTERRUPTED;
    }
    return rc;
}

/*  --max-cost stopped the run with lines left (stats): say what was spent
    and how many lines were not run, in the summary (out), or on stderr
    with --quiet. Returns rc, or EXIT_COST_CAP for a run that was ok so
    far: an incomplete run is not "all lines ok" (nor only "some lines
    failed"). */
static int s_run_capped(s_run_t *run, const llmq_runner_stats_t *stats,
                        FILE *out, int rc)
{
    size_t left = stats->todo - stats->finished;
    if (!stats->capped || left == 0)
        return rc;
    //  -o - has no resume: the lines left are only counted.
    bool piped = streq(run->opts->output, "-");
    fprintf(run->opts->quiet ? stderr : out,
            "%s--max-cost reached: $%.6f spent (cap $%.6f); %zu lines not "
            "run%s%s%s\n",
            run->opts->quiet ? "llmq run: " : "  ", stats->spent_usd,
            run->opts->max_cost_usd, left, piped ? "" : ", not in ",
            piped ? "" : run->opts->output,
            piped ? ""
                  : ": rerun without --max-cost (or with a higher one) "
                    "to resume");
    return rc == EXIT_OK || rc == EXIT_FAILED_LINES ? EXIT_COST_CAP : rc;
}

/*  The final file (whole lines in input order, atomically replaced) and
    the summary. Returns the run's exit code. */
static int s_run_end(s_run_t *run, int rc)
{
    s_opts_t *opts = run->opts;
    if (llmq_runner_finish(run->runner) != 0) {
        fprintf(stderr, "llmq run: cannot rewrite %s in order: %s\n",
                opts->output, strerror(errno));
        rc = EXIT_FATAL;
    }
    llmq_runner_stats_t stats;
    llmq_runner_stats(run->runner, &stats);
    size_t failed = llmq_progress_failed(run->progress) + stats.resumed_failed;
    FILE *out = streq(opts->output, "-") ? stderr : stdout;
    if (!opts->quiet)
        llmq_progress_summary(
            run->progress, out, opts->output,
            run->conn.simulated
                ? "SIMULATED results (llmq-sim): no real model was called"
                : NULL);
    if (rc == EXIT_OK && failed > 0)
        rc = EXIT_FAILED_LINES;
    rc = s_run_capped(run, &stats, out, rc);
    fflush(out);
    return rc;
}

static int s_cmd_run(s_opts_t *opts, int argc, char **argv)
{
    if (argc != 1 || !opts->output) {
        fprintf(
            stderr,
            "llmq run: need one input file and -o OUT (see llmq run --help)\n");
        return EXIT_USAGE;
    }
    //  --mode: the file as one durable broker batch (llmq batch submit).
    if (opts->mode && opts->max_cost_usd > 0) {
        fprintf(stderr, "llmq run: --max-cost caps a realtime run; it does "
                        "not apply to --mode (a broker batch)\n");
        return EXIT_USAGE;
    }
    if (opts->mode)
        return s_batch_submit(opts, argv[0], opts->output, false, true);
    int rc = s_prepare_output("run", argv[0], opts->output);
    if (rc)
        return rc;
    s_run_t run = {0};
    run.opts = opts;
    llmq_runner_stats_t stats = {0};
    if (!(rc = s_run_new(&run, argv[0])))
        llmq_runner_stats(run.runner, &stats);
    if (!rc && stats.complete)
        rc = s_say_complete(opts->output, stats.total, stats.resumed_failed);
    else if (!rc && stats.todo > 0)
        rc = s_run_connect(&run);
    if (!rc && !stats.complete) {
        run.progress = llmq_progress_new(stats.todo, stats.resumed,
                                         !opts->quiet && isatty(STDERR_FILENO));
        if (stats.todo > 0)
            rc = s_run_loop(&run);
        rc = s_run_end(&run, rc);
    }
    s_run_destroy(&run);
    return rc;
}

//  --------------------------------------------------------------------------
//  llmq chat

static void s_print_chunk(const char *id, const cJSON *chunk, const char *delta,
                          void *arg)
{
    (void)id;
    (void)chunk;
    *(bool *)arg = true;
    fputs(delta, stdout);
    fflush(stdout);
}

/*  Add a {role, content} message to messages. */
static void s_chat_message(cJSON *messages, const char *role,
                           const char *content)
{
    cJSON *message = cJSON_CreateObject();
    cJSON_AddStringToObject(message, "role", role);
    cJSON_AddStringToObject(message, "content", content);
    cJSON_AddItemToArray(messages, message);
}

/*  The chat request: --system, the prompt, --max-tokens. Fresh. */
static cJSON *s_chat_body(const s_opts_t *opts, const char *model,
                          const char *prompt)
{
    cJSON *body = cJSON_CreateObject();
    cJSON_AddStringToObject(body, "model", model);
    cJSON *messages = cJSON_AddArrayToObject(body, "messages");
    if (opts->system)
        s_chat_message(messages, "system", opts->system);
    s_chat_message(messages, "user", prompt);
    if (opts->max_tokens > 0)
        cJSON_AddNumberToObject(body, "max_tokens", opts->max_tokens);
    return body;
}

/*  Print the answer (unless streamed already) or the error. Returns the
    exit code. */
static int s_chat_show(const s_opts_t *opts, const s_conn_t *conn,
                       const llmq_result_t *result, bool streamed)
{
    if (!result)
        return s_interrupted ? EXIT_INTERRUPTED : EXIT_FATAL;
    if (!result->ok) {
        if (streamed)
            printf("\n");
        fprintf(stderr, "llmq chat: %s: %s\n", result->error_code,
                result->error_message ? result->error_message : "");
        return streq(result->error_code, "timeout") ? EXIT_FATAL
                                                    : EXIT_FAILED_LINES;
    }
    if (!streamed) {
        const char *text = llmq_result_text(result);
        fputs(text ? text : "", stdout);
    }
    printf("\n");
    if (opts->verbose || conn->simulated)
        fprintf(stderr,
                "[%s on %s, %" PRId64 " tokens, $%.6f, %" PRId64 " ms%s]\n",
                conn->model, result->worker ? result->worker : "?",
                result->total_tokens, result->cost_usd, result->elapsed_ms,
                conn->simulated ? ", SIMULATED by llmq-sim" : "");
    return EXIT_OK;
}

static int s_cmd_chat(s_opts_t *opts, int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "llmq chat: need a prompt (see llmq chat --help)\n");
        return EXIT_USAGE;
    }
    //  Several words without quotes are one prompt.
    size_t size = 1;
    for (int i = 0; i < argc; i++)
        size += strlen(argv[i]) + 1;
    char *prompt = (char *)calloc(1, size);
    for (int i = 0; prompt && i < argc; i++) {
        if (i)
            strcat(prompt, " ");
        strcat(prompt, argv[i]);
    }
    opts->quiet = true; //  no cluster banner in the middle of an answer
    s_conn_t conn = {0};
    int rc = prompt ? s_connect(opts, &conn, true, NULL, 0) : EXIT_FATAL;
    if (rc == 0) {
        llmq_client_set_give_up(
            conn.client,
            (int)(opts->give_up_ms > 0 ? opts->give_up_ms : 60000));
        cJSON *body = s_chat_body(opts, conn.model, prompt);
        bool streamed = false;
        llmq_result_t *result =
            opts->no_stream
                ? llmq_infer(conn.client, LLMQ_OP_CHAT, conn.model, body, NULL)
                : llmq_stream(conn.client, conn.model, body, s_print_chunk,
                              &streamed);
        rc = s_chat_show(opts, &conn, result, streamed);
        llmq_result_destroy(&result);
        cJSON_Delete(body);
    }
    free(prompt);
    s_conn_close(&conn);
    return rc;
}

//  --------------------------------------------------------------------------
//  llmq status and ping

static const char *s_json_text(cJSON *value, char *buffer, size_t size)
{
    buffer[0] = 0;
    if (cJSON_IsString(value))
        snprintf(buffer, size, "%s", value->valuestring);
    else if (cJSON_IsBool(value))
        snprintf(buffer, size, "%s", cJSON_IsTrue(value) ? "yes" : "no");
    else if (cJSON_IsNumber(value)) {
        if (value->valuedouble == (double)(int64_t)value->valuedouble)
            snprintf(buffer, size, "%" PRId64, (int64_t)value->valuedouble);
        else
            snprintf(buffer, size, "%.3f", value->valuedouble);
    } else if (cJSON_IsArray(value)) {
        cJSON *item;
        size_t used = 0;
        cJSON_ArrayForEach(item, value)
        {
            char part[128];
            s_json_text(item, part, sizeof(part));
            used +=
                (size_t)snprintf(buffer + used, used < size ? size - used : 0,
                                 "%s%s", used ? "," : "", part);
            if (used >= size)
                break;
        }
    } else if (value && !cJSON_IsNull(value)) {
        char *text = cJSON_PrintUnformatted(value);
        snprintf(buffer, size, "%s", text ? text : "");
        free(text);
    }
    return buffer;
}

/*  Print an array of objects as a table with the given columns. */
static void s_table(const char *title, cJSON *rows, const char *const *columns)
{
    int ncol = 0;
    while (columns[ncol])
        ncol++;
    int width[16] = {0};
    for (int c = 0; c < ncol; c++)
        width[c] = (int)strlen(columns[c]);
    char cell[256];
    cJSON *row;
    cJSON_ArrayForEach(row, rows) for (int c = 0; c < ncol; c++)
    {
        int len = (int)strlen(s_json_text(cJSON_GetObjectItem(row, columns[c]),
                                          cell, sizeof(cell)));
        if (len > width[c])
            width[c] = len > 40 ? 40 : len;
    }
    printf("%s (%d)\n", title, cJSON_GetArraySize(rows));
    if (cJSON_GetArraySize(rows) == 0) {
        printf("  (none)\n\n");
        return;
    }
    printf(" ");
    for (int c = 0; c < ncol; c++) {
        char upper[64];
        snprintf(upper, sizeof(upper), "%s", columns[c]);
        for (char *p = upper; *p; p++)
            *p = (char)(*p == '_' ? '-' : toupper((unsigned char)*p));
        printf(" %-*s", width[c], upper);
    }
    printf("\n");
    cJSON_ArrayForEach(row, rows)
    {
        printf(" ");
        for (int c = 0; c < ncol; c++)
            printf(" %-*.*s", width[c], width[c],
                   s_json_text(cJSON_GetObjectItem(row, columns[c]), cell,
                               sizeof(cell)));
        printf("\n");
    }
    printf("\n");
}

static int s_cmd_status(s_opts_t *opts)
{
    s_conn_t conn = {0};
    opts->quiet = true;
    int rc = s_connect(opts, &conn, false, NULL, 0);
    if (rc != 0) {
        s_conn_close(&conn);
        return rc;
    }
    cJSON *status = llmq_client_status(conn.client, 3000);
    if (!status) {
        fprintf(stderr, "llmq status: no status reply from %s\n",
                llmq_client_endpoint(conn.client));
        s_conn_close(&conn);
        return EXIT_FATAL;
    }
    if (opts->json) {
        char *text = cJSON_Print(status);
        printf("%s\n", text);
        free(text);
    } else {
        char buffer[256];
        printf("broker %s", s_json_text(cJSON_GetObjectItem(status, "broker"),
                                        buffer, sizeof(buffer)));
        printf(" version %s",
               s_json_text(cJSON_GetObjectItem(status, "version"), buffer,
                           sizeof(buffer)));
        cJSON *uptime = cJSON_GetObjectItem(status, "uptime_ms");
        if (cJSON_IsNumber(uptime))
            printf(", up %.1f s", uptime->valuedouble / 1000.0);
        printf(" at %s\n\n", llmq_client_endpoint(conn.client));
        const char *worker_columns[] = {"name",      "pool",     "provider",
                                        "models",    "capacity", "credit",
                                        "in_flight", "healthy",  NULL};
        s_table("workers", cJSON_GetObjectItem(status, "workers"),
                worker_columns);
        const char *queue_columns[] = {"model", "pool", "depth", NULL};
        s_table("queues", cJSON_GetObjectItem(status, "queues"), queue_columns);
        cJSON *counters = cJSON_GetObjectItem(status, "counters");
        printf("counters\n");
        cJSON *counter;
        cJSON_ArrayForEach(counter, counters)
            printf("  %-16s %s\n", counter->string,
                   s_json_text(counter, buffer, sizeof(buffer)));
    }
    cJSON_Delete(status);
    s_conn_close(&conn);
    return EXIT_OK;
}

static int s_cmd_ping(s_opts_t *opts)
{
    const char *endpoint = opts->broker              ? opts->broker
                           : getenv("LLMQ_ENDPOINT") ? getenv("LLMQ_ENDPOINT")
                                                     : LLMQ_DEFAULT_ENDPOINT;
    llmq_client_t *client = s_client_new(opts, endpoint, true);
    if (!client)
        return EXIT_USAGE;
    char *version = NULL;
    int ms = llmq_client_ping(
        client, opts->timeout_ms > 0 ? (int)opts->timeout_ms : 3000, &version);
    llmq_client_destroy(&client);
    if (ms < 0) {
        fprintf(stderr, "llmq ping: no answer from %s%s\n", endpoint,
                s_silence_hint(opts));
        return s_interrupted ? EXIT_INTERRUPTED : EXIT_FATAL;
    }
    printf("pong from %s (%s) in %d ms\n", endpoint, version ? version : "?",
           ms);
    free(version);
    return EXIT_OK;
}

//  --------------------------------------------------------------------------
//  llmq batch: durable broker-side batches (docs/BATCHES.md)

/*  Draw the batch's progress on stderr: redrawn in place on a terminal,
    else one line whenever the state or counts change. */
static void s_batch_progress(const llmq_batch_status_t *st, bool tty,
                             char *last, size_t last_size)
{
    char line[400], provider[96] = "";
    //  The provider's counts while it works (results come at its end).
    if (st->provider_done >= 0)
        snprintf(provider, sizeof provider,
                 "  provider: %lld/%lld done, %lld failed;",
                 (long long)st->provider_done, (long long)st->total,
                 (long long)st->provider_failed);
    snprintf(line, sizeof line,
             "batch %s: %s%s%s%s%s  %lld/%lld results, %lld failed, %lld "
             "tokens, $%.6f",
             st->batch, st->state, *st->mode ? " (" : "", st->mode,
             *st->mode ? ")" : "", provider, (long long)st->done,
             (long long)st->total, (long long)st->failed,
             (long long)st->total_tokens, st->cost_usd);
    if (streq(line, last))
        return;
    snprintf(last, last_size, "%s", line);
    if (tty)
        fprintf(stderr, "\r\033[K%s", line);
    else
        fprintf(stderr, "%s\n", line);
    fflush(stderr);
}

static void s_batch_summary(const llmq_batch_status_t *st)
{
    fprintf(
        stderr,
        "batch %s %s: %lld items, %lld ok, %lld failed; mode %s\n"
        "usage: %lld prompt + %lld completion = %lld tokens; cost $%.6f%s\n",
        st->batch, st->state, (long long)st->total,
        (long long)(st->done - st->failed), (long long)st->failed,
        *st->mode ? st->mode : "-", (long long)st->prompt_tokens,
        (long long)st->completion_tokens, (long long)st->total_tokens,
        st->cost_usd,
        streq(st->mode, "provider")
            ? " (provider Batch API price, batch discount applied)"
            : "");
}

/*  Wait until the batch is finished, showing its progress. 0, or an exit
    code. */
static int s_batch_wait(s_opts_t *opts, llmq_client_t *client, const char *id,
                        llmq_batch_status_t *st, bool embedded)
{
    bool tty = isatty(2) && !opts->quiet;
    char last[400] = "";
    while (true) {
        if (llmq_batch_get(client, id, INT64_MAX / 2, st, NULL, NULL, NULL,
                           NULL)) {
            if (tty)
                fprintf(stderr, "\n");
            fprintf(stderr, "llmq batch: %s\n", llmq_batch_error(client));
            return s_interrupted ? EXIT_INTERRUPTED : EXIT_FATAL;
        }
        if (!opts->quiet)
            s_batch_progress(st, tty, last, sizeof last);
        if (llmq_batch_state_final(st->state))
            break;
        //  Poll period of the display, not a wait for an event.
        for (int i = 0; i < 10 && !s_interrupted; i++)
            zclock_sleep(50);
        if (s_interrupted) {
            if (tty)
                fprintf(stderr, "\n");
            if (embedded)
                fprintf(stderr,
                        "llmq batch: interrupted; batch %s is kept in the "
                        "local database: rerun the same command to resume "
                        "it\n",
                        id);
            else
                fprintf(stderr,
                        "llmq batch: interrupted; the batch goes on: "
                        "llmq batch results %s -o OUT\n",
                        id);
            return EXIT_INTERRUPTED;
        }
    }
    if (tty && !opts->quiet)
        fprintf(stderr, "\n");
    return EXIT_OK;
}

/*  Fetch every result (input order) and write OUT atomically. */
static int s_batch_write(llmq_client_t *client, const char *id,
                         const char *output, size_t *failed_p)
{
    size_t count = 0;
    //  Bodies go to OUT as they came: no tree per result.
    llmq_client_set_raw_bodies(client, true);
    llmq_result_t **results = llmq_batch_results(client, id, &count);
    if (!results) {
        fprintf(stderr, "llmq batch: %s\n", llmq_batch_error(client));
        return EXIT_FATAL;
    }
    bool to_stdout = streq(output, "-");
    char *tmp = to_stdout ? NULL : zsys_sprintf("%s.tmp", output);
    FILE *file = to_stdout ? stdout : tmp ? fopen(tmp, "w") : NULL;
    int rc = file ? EXIT_OK : EXIT_FATAL;
    size_t failed = 0;
    for (size_t i = 0; i < count; i++) {
        if (!results[i]->ok)
            failed++;
        char *line =
            file ? llmq_jsonl_result_line(results[i]->id, results[i]) : NULL;
        if (line && fputs(line, file) < 0)
            rc = EXIT_FATAL;
        free(line);
        llmq_result_destroy(&results[i]);
    }
    free(results);
    if (file && (fflush(file) || (!to_stdout && fsync(fileno(file)))))
        rc = EXIT_FATAL;
    if (file && !to_stdout && fclose(file))
        rc = EXIT_FATAL;
    if (rc == EXIT_OK && !to_stdout && rename(tmp, output))
        rc = EXIT_FATAL;
    if (rc != EXIT_OK)
        fprintf(stderr, "llmq batch: cannot write %s: %s\n", output,
                strerror(errno));
    zstr_free(&tmp);
    *failed_p = failed;
    return rc;
}

/*  Check the lines of a batch: usable, one op (the provider's rule), a
    model (the first line's, unless --model). Returns 0 or EXIT_USAGE. */
static int s_batch_items_check(s_opts_t *opts, zlistx_t *items,
                               const char *input, const char **model_p,
                               int *op_p)
{
    const char *model = opts->model;
    int op = -1;
    for (llmq_jsonl_item_t *item = (llmq_jsonl_item_t *)zlistx_first(items);
         item; item = (llmq_jsonl_item_t *)zlistx_next(items)) {
        if (item->error) {
            fprintf(stderr, "llmq batch: line %zu: %s\n", item->line_no,
                    item->error);
            return EXIT_USAGE;
        }
        if (op >= 0 && (int)item->op != op) {
            fprintf(stderr,
                    "llmq batch: line %zu: one batch has one op (url)\n",
                    item->line_no);
            return EXIT_USAGE;
        }
        op = (int)item->op;
        if (!model && item->model)
            model = item->model;
    }
    if (zlistx_size(items) == 0) {
        fprintf(stderr, "llmq batch: %s has no lines\n", input);
        return EXIT_USAGE;
    }
    *model_p = model;
    *op_p = op;
    return s_check_duplicates("batch", items);
}

/*  A batch id that the same command always computes again, so that a rerun
    after an interrupt (Ctrl-C, kill -9, reboot) opens, adds to and waits
    for the SAME broker batch, and so the same provider batch: the hash of
    the mode, the model, where the results go and every input line. */
static void s_batch_stable_id(zlistx_t *items, const char *mode,
                              const char *model, const char *output, char *id,
                              size_t size)
{
    //  OUT's real path: its directory's (OUT may not exist yet) + its name.
    char *where = NULL;
    if (output && !streq(output, "-")) {
        char *copy = strdup(output), *copy2 = strdup(output);
        char *dir = copy ? realpath(dirname(copy), NULL) : NULL;
        if (dir && copy2)
            where = zsys_sprintf("%s/%s", dir, basename(copy2));
        free(dir);
        free(copy);
        free(copy2);
    }
    if (!where)
        where = strdup(output ? output : "-");
    uint64_t hash = llmq_jsonl_fnv1a(mode, strlen(mode) + 1);
    hash ^= llmq_jsonl_fnv1a(model, strlen(model) + 1) * 31;
    hash ^= llmq_jsonl_fnv1a(where, strlen(where) + 1) * 131;
    zstr_free(&where);
    uint64_t lines = 0xcbf29ce484222325ULL;
    for (llmq_jsonl_item_t *item = (llmq_jsonl_item_t *)zlistx_first(items);
         item; item = (llmq_jsonl_item_t *)zlistx_next(items)) {
        const char *text = item->line ? item->line : item->custom_id;
        lines =
            (lines ^ llmq_jsonl_fnv1a(text, strlen(text))) * 0x100000001b3ULL;
    }
    snprintf(id, size, "run-%016" PRIx64, hash ^ lines);
}

/*  Send the items as batch id (open, add in chunks, close), unless the
    broker already has it closed (a rerun: resume it). Returns 0 or an
    exit code. */
static int s_batch_send(s_opts_t *opts, llmq_client_t *client, const char *id,
                        zlistx_t *items, const char *model, int op,
                        const char *mode)
{
    llmq_batch_status_t st;
    if (llmq_batch_get(client, id, INT64_MAX / 2, &st, NULL, NULL, NULL,
                       NULL) == 0 &&
        !streq(st.state, "validating")) {
        if (!opts->quiet)
            fprintf(stderr, "llmq batch: resuming batch %s (%s)\n", id,
                    st.state);
        return 0;
    }
    llmq_batch_opts_t bopts = {0};
    bopts.mode = mode;
    bopts.op = llmq_op_name((llmq_op_t)(op < 0 ? 0 : op));
    if (llmq_batch_open(client, id, model, &bopts)) {
        fprintf(stderr, "llmq batch: open: %s\n", llmq_batch_error(client));
        return EXIT_FATAL;
    }
    //  Adds of at most 1,000 items or about 8 MB of JSON; the seqs make a
    //  resend (or a rerun's adds) store nothing twice.
    int64_t seq = 0;
    int rc = 0;
    cJSON *chunk = cJSON_CreateArray();
    size_t chunk_bytes = 0;
    llmq_jsonl_item_t *item = (llmq_jsonl_item_t *)zlistx_first(items);
    while (true) {
        bool flush = !item || cJSON_GetArraySize(chunk) >= 1000 ||
                     chunk_bytes > 8 * 1024 * 1024;
        if (flush && cJSON_GetArraySize(chunk) > 0) {
            if (llmq_batch_add(client, id, seq++, chunk, NULL)) {
                fprintf(stderr, "llmq batch: add: %s\n",
                        llmq_batch_error(client));
                rc = EXIT_FATAL;
                break;
            }
            cJSON_Delete(chunk);
            chunk = cJSON_CreateArray();
            chunk_bytes = 0;
        }
        if (!item || s_interrupted)
            break;
        cJSON *body = llmq_jsonl_item_body(item);
        cJSON *entry = cJSON_CreateObject();
        cJSON_AddStringToObject(entry, "custom_id", item->custom_id);
        cJSON_AddItemToObject(entry, "body", cJSON_Duplicate(body, true));
        cJSON_AddItemToArray(chunk, entry);
        chunk_bytes += item->line ? strlen(item->line) : 256;
        if (item->body && item->line) {
            cJSON_Delete(item->body);
            item->body = NULL;
        }
        item = (llmq_jsonl_item_t *)zlistx_next(items);
    }
    cJSON_Delete(chunk);
    if (rc)
        return rc;
    if (s_interrupted)
        return EXIT_INTERRUPTED;
    if (llmq_batch_close(client, id, NULL)) {
        fprintf(stderr, "llmq batch: close: %s\n", llmq_batch_error(client));
        return EXIT_FATAL;
    }
    return 0;
}

/*  The database beside OUT belongs to this OUT: a batch of it that is not
    ours and not finished was made from an earlier version of the input (or
    another mode or model). Its results would go nowhere, so cancel it
    (at the provider too) rather than let it run on. */
static void s_batch_cancel_stale(llmq_client_t *client, const char *id)
{
    size_t count = 0;
    llmq_batch_status_t *list = llmq_batch_list(client, &count);
    for (size_t i = 0; list && i < count; i++) {
        if (streq(list[i].batch, id) || llmq_batch_state_final(list[i].state))
            continue;
        llmq_batch_status_t st;
        fprintf(stderr,
                "llmq batch: cancelling batch %s (%s) of an earlier input, "
                "mode or model for the same output\n",
                list[i].batch, list[i].state);
        if (llmq_batch_cancel(client, list[i].batch, &st))
            fprintf(stderr, "llmq batch: cancel %s: %s\n", list[i].batch,
                    llmq_batch_error(client));
    }
    free(list);
}

/*  The batch database of an embedded cluster: beside OUT (OUT.llmq-batch.db),
    or ./llmq-batches.db for -o -. Fresh. */
static char *s_batch_db_path(const char *output)
{
    if (!output || streq(output, "-"))
        return strdup("llmq-batches.db");
    return zsys_sprintf("%s.llmq-batch.db", output);
}

/*  The run is over and OUT is written: the embedded broker's database has
    nothing left to resume. */
static void s_batch_db_remove(const char *db)
{
    const char *suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < 4; i++) {
        char *path = zsys_sprintf("%s%s", db, suffixes[i]);
        if (path)
            unlink(path);
        zstr_free(&path);
    }
}

/*  Wait for the batch, write OUT, sum it up. Returns an exit code. */
static int s_batch_finish(s_opts_t *opts, s_conn_t *conn, const char *id,
                          const char *output)
{
    llmq_batch_status_t st;
    int rc = s_batch_wait(opts, conn->client, id, &st, conn->cluster != NULL);
    if (rc != EXIT_OK)
        return rc;
    size_t failed = 0;
    rc = s_batch_write(conn->client, id, output, &failed);
    if (!opts->quiet)
        s_batch_summary(&st);
    if (!opts->quiet && conn->simulated)
        fprintf(stderr,
                "SIMULATED results (llmq-sim): no real model was called\n");
    if (rc == EXIT_OK && (failed || !streq(st.state, "completed")))
        rc = EXIT_FAILED_LINES;
    return rc;
}

/*  One `llmq batch submit` (or `llmq run --mode`). */
typedef struct {
    zlistx_t *items;    /* the input lines */
    const char *model;  /* the batch's model, or NULL: the broker's */
    int op;             /* its one op */
    const char *mode;   /* auto, realtime or provider */
    const char *output; /* OUT, or NULL (detached) */
    const char *db;     /* an embedded broker's database */
    bool detach;        /* print the id and leave */
    bool stable;        /* a stable id on any broker */
} s_batch_t;

/*  Connected: send the batch, print its id and (unless detached) wait and
    write OUT. Returns an exit code. */
static int s_batch_run(s_opts_t *opts, s_conn_t *conn, s_batch_t *batch)
{
    if (!batch->model)
        batch->model = conn->model;
    //  A provider without HTTP has no Batch API: the batch would wait for
    //  a batch_api pool forever.
    if (conn->cluster && streq(batch->mode, "provider") &&
        streq(conn->info.provider, "echo")) {
        fprintf(stderr, "llmq batch: provider echo has no Batch API\n");
        return EXIT_USAGE;
    }
    bool stable = batch->stable || conn->cluster;
    char id[40];
    if (stable)
        s_batch_stable_id(batch->items, batch->mode, batch->model,
                          batch->output, id, sizeof id);
    else
        snprintf(id, sizeof id, "b-%08x%08x", (unsigned)randof(0x7fffffff),
                 (unsigned)(zclock_usecs() & 0x7fffffff));
    if (opts->deadline_ms > 0)
        fprintf(stderr, "llmq batch: --deadline-ms is ignored for batches\n");
    if (conn->cluster && batch->output && !streq(batch->output, "-"))
        s_batch_cancel_stale(conn->client, id);
    int rc = s_batch_send(opts, conn->client, id, batch->items, batch->model,
                          batch->op, batch->mode);
    if (rc && s_interrupted) {
        fprintf(stderr, "llmq batch: interrupted while sending batch %s: %s\n",
                id,
                stable ? "rerun the same command to resume it"
                       : "its items were not all sent");
        return EXIT_INTERRUPTED;
    }
    if (rc)
        return rc;
    printf("%s\n", id);
    fflush(stdout);
    if (!opts->quiet)
        fprintf(stderr, "llmq batch: %s: %zu items, model %s, mode %s%s%s\n",
                id, zlistx_size(batch->items), batch->model, batch->mode,
                conn->cluster ? ", database " : "",
                conn->cluster ? batch->db : "");
    if (batch->detach)
        return rc;
    return s_batch_finish(opts, conn, id, batch->output);
}

/*  Send the lines of input as a batch; print its id; unless detached,
    wait and write the results to output. With no broker, an embedded
    cluster runs it, its database beside OUT: a rerun of the same command
    resumes the same batch (stable id). stable: `llmq run --mode` (a stable
    id on any broker). */
static int s_batch_submit(s_opts_t *opts, const char *input, const char *output,
                          bool detach, bool stable)
{
    s_batch_t batch = {.mode = opts->mode ? opts->mode : "auto",
                       .op = -1,
                       .output = output,
                       .detach = detach,
                       .stable = stable};
    if (!streq(batch.mode, "auto") && !streq(batch.mode, "realtime") &&
        !streq(batch.mode, "provider")) {
        fprintf(stderr, "llmq batch: --mode is auto, realtime or provider\n");
        return EXIT_USAGE;
    }
    int rc = output ? s_prepare_output("batch", input, output) : 0;
    if (rc)
        return rc;
    char err[512] = "";
    batch.items = llmq_jsonl_read_input(input, false, err, sizeof(err));
    if (!batch.items) {
        fprintf(stderr, "llmq batch: %s\n", err);
        return EXIT_USAGE;
    }
    rc = s_batch_items_check(opts, batch.items, input, &batch.model, &batch.op);
    bool complete = !rc && output && !detach &&
                    s_output_complete(opts, batch.items, output, &rc);
    bool send = !rc && !complete;
    char *db = send ? s_batch_db_path(output) : NULL;
    s_conn_t conn = {0};
    if (send) {
        opts->batch_db = batch.db = db;
        const char **model = batch.model ? &batch.model : NULL;
        rc = s_connect(opts, &conn, !detach, model, model ? 1 : 0);
        opts->batch_db = NULL;
        if (!rc)
            rc = s_batch_run(opts, &conn, &batch);
    }
    if (conn.cluster && (rc == EXIT_OK || rc == EXIT_FAILED_LINES)) {
        s_conn_close(&conn);
        s_batch_db_remove(db);
    }
    s_conn_close(&conn);
    free(db);
    zlistx_destroy(&batch.items);
    return rc;
}

/*  llmq batch status ID [--json]. Returns an exit code. */
static int s_batch_status_cmd(s_opts_t *opts, llmq_client_t *client,
                              const char *id)
{
    llmq_batch_status_t st;
    if (llmq_batch_get(client, id, INT64_MAX / 2, &st, NULL, NULL, NULL,
                       NULL)) {
        fprintf(stderr, "llmq batch: %s\n", llmq_batch_error(client));
        return strncmp(llmq_batch_error(client), "not_found", 9)
                   ? EXIT_FATAL
                   : EXIT_FAILED_LINES;
    }
    if (opts->json)
        printf("{\"batch\":\"%s\",\"state\":\"%s\",\"mode\":\"%s\","
               "\"total\":%lld,\"done\":%lld,\"failed\":%lld,"
               "\"prompt_tokens\":%lld,\"completion_tokens\":%lld,"
               "\"total_tokens\":%lld,\"cost_usd\":%.6f,"
               "\"provider_done\":%lld,\"provider_failed\":%lld}\n",
               st.batch, st.state, st.mode, (long long)st.total,
               (long long)st.done, (long long)st.failed,
               (long long)st.prompt_tokens, (long long)st.completion_tokens,
               (long long)st.total_tokens, st.cost_usd,
               (long long)st.provider_done, (long long)st.provider_failed);
    else
        printf("batch     %s\nstate     %s\nmode      %s\nitems     %lld "
               "(%lld done, %lld failed)\ntokens    %lld prompt + %lld "
               "completion = %lld\ncost      $%.6f%s\n",
               st.batch, st.state, *st.mode ? st.mode : "-",
               (long long)st.total, (long long)st.done, (long long)st.failed,
               (long long)st.prompt_tokens, (long long)st.completion_tokens,
               (long long)st.total_tokens, st.cost_usd,
               streq(st.mode, "provider") ? " (Batch API price)" : "");
    return EXIT_OK;
}

/*  llmq batch list: one row per batch. Returns an exit code. */
static int s_batch_list_cmd(llmq_client_t *client)
{
    size_t n = 0;
    llmq_batch_status_t *list = llmq_batch_list(client, &n);
    if (!list) {
        fprintf(stderr, "llmq batch: %s\n", llmq_batch_error(client));
        return EXIT_FATAL;
    }
    printf("%-24s %-12s %-9s %-20s %10s %10s %8s %12s\n", "BATCH", "STATE",
           "MODE", "MODEL", "ITEMS", "DONE", "FAILED", "COST_USD");
    for (size_t i = 0; i < n; i++)
        printf("%-24s %-12s %-9s %-20s %10lld %10lld %8lld %12.6f\n",
               list[i].batch, list[i].state, *list[i].mode ? list[i].mode : "-",
               list[i].model, (long long)list[i].total, (long long)list[i].done,
               (long long)list[i].failed, list[i].cost_usd);
    free(list);
    return EXIT_OK;
}

static int s_cmd_batch(s_opts_t *opts, int argc, char **argv)
{
    const char *sub = argc > 0 ? argv[0] : "";
    bool needs_id = streq(sub, "status") || streq(sub, "results") ||
                    streq(sub, "cancel") || streq(sub, "wait");
    if (streq(sub, "submit")) {
        if (argc != 2) {
            fprintf(stderr, "llmq batch submit: need one input file\n");
            return EXIT_USAGE;
        }
        char *fallback = NULL;
        const char *output = opts->output;
        if (!output && !opts->detach)
            output = fallback = zsys_sprintf("%s.out.jsonl", argv[1]);
        int rc = s_batch_submit(opts, argv[1], output, opts->detach, false);
        zstr_free(&fallback);
        return rc;
    }
    if (needs_id ? argc != 2 : (!streq(sub, "list") || argc != 1)) {
        fprintf(stderr, "llmq batch: see llmq batch --help\n");
        return EXIT_USAGE;
    }
    if (streq(sub, "results") && !opts->output) {
        fprintf(stderr, "llmq batch results: need -o OUT.jsonl\n");
        return EXIT_USAGE;
    }
    s_conn_t conn = {0};
    int rc = s_connect(opts, &conn, false, NULL, 0);
    if (rc) {
        s_conn_close(&conn);
        return rc;
    }
    llmq_batch_status_t st;
    if (streq(sub, "status"))
        rc = s_batch_status_cmd(opts, conn.client, argv[1]);
    else if (streq(sub, "results") || streq(sub, "wait")) {
        rc = s_batch_wait(opts, conn.client, argv[1], &st, false);
        if (rc == EXIT_OK && streq(sub, "results")) {
            size_t failed = 0;
            rc = s_batch_write(conn.client, argv[1], opts->output, &failed);
            if (!opts->quiet)
                s_batch_summary(&st);
            if (rc == EXIT_OK && (failed || !streq(st.state, "completed")))
                rc = EXIT_FAILED_LINES;
        }
    } else if (streq(sub, "cancel")) {
        if (llmq_batch_cancel(conn.client, argv[1], &st)) {
            fprintf(stderr, "llmq batch: %s\n", llmq_batch_error(conn.client));
            rc = EXIT_FATAL;
        } else
            printf("%s %s\n", st.batch, st.state);
    } else
        rc = s_batch_list_cmd(conn.client);
    s_conn_close(&conn);
    return rc;
}

//  --------------------------------------------------------------------------
//  llmq keygen NAME

static int s_cmd_keygen(int argc, char **argv)
{
    if (argc == 1 && (streq(argv[0], "--help") || streq(argv[0], "-h"))) {
        printf("usage: llmq keygen NAME\n\nWrites a CURVE keypair in CZMQ's "
               "certificate format: NAME (public,\nto give to the broker's "
               "--client-keys or --worker-keys directory, or as\n"
               "--broker-key) and NAME_secret (mode 0600, for --curve-cert). "
               "Never\noverwrites.\n");
        return EXIT_OK;
    }
    if (argc != 1 || argv[0][0] == '-') {
        fprintf(stderr, "usage: llmq keygen NAME\n");
        return EXIT_USAGE;
    }
    char err[512];
    if (llmq_curve_keygen(argv[0], err, sizeof(err)) != 0) {
        fprintf(stderr, "llmq keygen: %s\n", err);
        return EXIT_FATAL;
    }
    char key[LLMQ_CURVE_KEY_LEN + 1];
    if (llmq_curve_key_resolve(argv[0], key, err, sizeof(err)) == 0)
        printf("%s\n", key);
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "%s", s_usage_main);
        return EXIT_USAGE;
    }
    const char *command = argv[1];
    if (streq(command, "--help") || streq(command, "-h") ||
        streq(command, "help")) {
        s_help(argc > 2 ? argv[2] : NULL);
        return EXIT_OK;
    }
    if (streq(command, "--version") || streq(command, "version")) {
        printf("llmq %s\n", LLMQ_VERSION_STRING);
        return EXIT_OK;
    }
    if (!streq(command, "run") && !streq(command, "chat") &&
        !streq(command, "status") && !streq(command, "ping") &&
        !streq(command, "batch") && !streq(command, "keygen")) {
        fprintf(stderr, "llmq: unknown command '%s'\n\n%s", command,
                s_usage_main);
        return EXIT_USAGE;
    }
    if (streq(command, "keygen"))
        return s_cmd_keygen(argc - 2, argv + 2);
    s_opts_t opts = {0};
    opts.give_up_ms = -1;
    opts.curve_cert = getenv("LLMQ_CURVE_CERT");
    opts.broker_key = getenv("LLMQ_BROKER_KEY");
    int first = 0;
    int rc = s_parse(command, argc - 1, argv + 1, &opts, &first);
    if (rc != 0)
        return rc > 0 ? EXIT_OK : EXIT_USAGE;
    s_install_signals();
    int rest = argc - 1 - first;
    char **args = argv + 1 + first;
    if (streq(command, "run"))
        rc = s_cmd_run(&opts, rest, args);
    else if (streq(command, "chat"))
        rc = s_cmd_chat(&opts, rest, args);
    else if (streq(command, "batch"))
        rc = s_cmd_batch(&opts, rest, args);
    else if (streq(command, "status"))
        rc = rest ? EXIT_USAGE : s_cmd_status(&opts);
    else
        rc = rest ? EXIT_USAGE : s_cmd_ping(&opts);
    if (rc == EXIT_USAGE && rest &&
        (streq(command, "status") || streq(command, "ping")))
        fprintf(stderr, "llmq %s: takes no arguments\n", command);
    return rc;
}
