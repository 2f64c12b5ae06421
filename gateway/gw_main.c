/*  gw_main.c - llmq-gateway: flags, start-up, signals, the ready line.

    Prints `ready llmq-gateway url=http://HOST:PORT` once it listens. The
    first SIGINT or SIGTERM closes the listening socket and lets requests in
    flight finish (up to --drain-ms); then, or at a second signal, the loop
    stops (what is left is abandoned: the broker runs it to the end, its
    HTTP clients see the connection close).
*/
#include "gw.h"
#include "llmq_duration.h"

#include <getopt.h>
#include <stddef.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

static void s_usage(FILE *out)
{
    fprintf(
        out,
        "Usage: llmq-gateway [options]\n"
        "\n"
        "OpenAI- and Anthropic-compatible HTTP front door onto an llmq "
        "broker.\n"
        "Point any OpenAI or Anthropic SDK at http://HOST:PORT/v1. Prints\n"
        "`ready llmq-gateway url=http://HOST:PORT` once it listens.\n"
        "\n"
        "Options:\n"
        "  --broker EP          broker frontend (default $LLMQ_ENDPOINT or\n"
        "                       " LLMQ_DEFAULT_ENDPOINT ")\n"
        "  --curve-cert PATH    CURVE: the gateway's secret certificate (env\n"
        "                       LLMQ_CURVE_CERT; made by `llmq keygen NAME`)\n"
        "  --broker-key KEY     CURVE: the broker's public key, Z85 text or "
        "its\n"
        "                       public certificate file (env LLMQ_BROKER_KEY)\n"
        "  --host ADDR          listen address (default 127.0.0.1)\n"
        "  --port N             listen port (default 8080; 0 = a free one)\n"
        "  --keys FILE          API keys, one `KEY TENANT` per line, reloaded "
        "when\n"
        "                       it changes (default: no auth, any key)\n"
        "  --data-dir DIR       uploaded files and batch ids (default\n"
        "                       ./llmq-gateway-data)\n"
        "  --max-body BYTES     request body limit (default 104857600)\n"
        "  --max-headers BYTES  request header limit (default 65536)\n"
        "  --max-conns N        open HTTP connections (default 10000)\n"
        "  --timeout-ms D       whole-request time limit (default 10m; a bare\n"
        "                       number is ms, or 500ms, 2s, 5m, 1h)\n"
        "  --drain-ms D         on SIGTERM, stop accepting and await requests "
        "in\n"
        "                       flight this long (default 10s; a second "
        "signal stops)\n"
        "  --idle-timeout-ms D  idle or slow HTTP connection limit (default "
        "10m20s)\n"
        "  -v, --verbose        log every request\n"
        "  --json-logs          log lines as JSON objects (one per line)\n"
        "  -h, --help           this text\n"
        "  --version            print the version\n");
}

static int s_num(const char *flag, const char *text, int64_t lo, int64_t hi,
                 int64_t *out)
{
    char *end = NULL;
    long long v = strtoll(text, &end, 10);
    if (!end || *end || v < lo || v > hi) {
        fprintf(stderr, GW_NAME ": %s wants a number in %lld..%lld, not '%s'\n",
                flag, (long long)lo, (long long)hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

/*  A duration flag (llmq_duration.h: ms, or with a unit), at least lo ms. */
static int s_dur(const char *flag, const char *text, int64_t lo, int64_t *out)
{
    int64_t ms = 0;
    if (llmq_duration_parse(text, &ms, NULL) != 0 || ms < lo) {
        fprintf(stderr,
                GW_NAME ": %s wants a duration of at least %lld ms (500ms, "
                        "2s, 5m), not '%s'\n",
                flag, (long long)lo, text);
        return -1;
    }
    *out = ms;
    return 0;
}

/*  The flags that set a field of gw_cfg_t: the table is the parser, so a
    new flag is one line (and one line of s_usage). */
typedef enum { S_TEXT, S_INT, S_NUM, S_DUR, S_ON } s_kind_t;

typedef struct {
    const char *name; /* long flag, without -- */
    s_kind_t kind;    /* what it takes and how the field is typed */
    size_t offset;    /* the field in gw_cfg_t */
    int64_t lo, hi;   /* numbers: the range; durations: the minimum (lo) */
} s_flag_t;

#define S_AT(field) offsetof(gw_cfg_t, field)
static const s_flag_t s_flags[] = {
    {"broker", S_TEXT, S_AT(broker), 0, 0},
    {"curve-cert", S_TEXT, S_AT(curve_cert), 0, 0},
    {"broker-key", S_TEXT, S_AT(broker_key), 0, 0},
    {"host", S_TEXT, S_AT(host), 0, 0},
    {"port", S_INT, S_AT(port), 0, 65535},
    {"keys", S_TEXT, S_AT(keys_path), 0, 0},
    {"data-dir", S_TEXT, S_AT(data_dir), 0, 0},
    {"max-body", S_NUM, S_AT(max_body), 1024, 1LL << 34},
    {"max-headers", S_NUM, S_AT(max_headers), 1024, 1 << 24},
    {"max-conns", S_NUM, S_AT(max_conns), 1, 1000000},
    {"timeout-ms", S_DUR, S_AT(timeout_ms), 100, 0},
    {"drain-ms", S_DUR, S_AT(drain_ms), 0, 0},
    {"idle-timeout-ms", S_DUR, S_AT(idle_timeout_ms), 1000, 0},
    {"verbose", S_ON, S_AT(verbose), 0, 0},
    {"json-logs", S_ON, S_AT(json_logs), 0, 0},
};
#define S_NFLAGS (sizeof s_flags / sizeof s_flags[0])
#define S_FLAG_BASE 256 /* getopt value of s_flags[0] */

/*  Set f's field from arg. Returns 0, or -1 (said on stderr). */
static int s_set(gw_cfg_t *c, const s_flag_t *f, const char *arg)
{
    char *field = (char *)c + f->offset;
    char flag[40];
    snprintf(flag, sizeof flag, "--%s", f->name);
    int64_t n = 0;
    switch (f->kind) {
    case S_TEXT:
        *(const char **)field = arg;
        return 0;
    case S_ON:
        *(bool *)field = true;
        return 0;
    case S_INT:
        if (s_num(flag, arg, f->lo, f->hi, &n) != 0)
            return -1;
        *(int *)field = (int)n;
        return 0;
    case S_NUM:
        return s_num(flag, arg, f->lo, f->hi, (int64_t *)field);
    case S_DUR:
        return s_dur(flag, arg, f->lo, (int64_t *)field);
    }
    return -1;
}

static int s_parse(int argc, char **argv, gw_cfg_t *c)
{
    struct option opts[S_NFLAGS + 3];
    for (size_t k = 0; k < S_NFLAGS; k++)
        opts[k] = (struct option){s_flags[k].name,
                                  s_flags[k].kind == S_ON ? no_argument
                                                          : required_argument,
                                  NULL, S_FLAG_BASE + (int)k};
    opts[S_NFLAGS] = (struct option){"help", no_argument, NULL, 'h'};
    opts[S_NFLAGS + 1] = (struct option){"version", no_argument, NULL, 'V'};
    opts[S_NFLAGS + 2] = (struct option){NULL, 0, NULL, 0};
    int ch, rc = 0;
    opterr = 0; //  we say what is wrong ourselves
    while (rc == 0 && (ch = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
        if (ch >= S_FLAG_BASE)
            rc = s_set(c, &s_flags[ch - S_FLAG_BASE], optarg);
        else if (ch == 'v')
            c->verbose = true;
        else if (ch == 'h') {
            s_usage(stdout);
            exit(0);
        } else if (ch == 'V') {
            printf(GW_NAME " " LLMQ_VERSION_STRING "\n");
            exit(0);
        } else {
            fprintf(stderr,
                    GW_NAME ": unknown or incomplete flag '%s' (see --help)\n",
                    argv[optind - 1]);
            return -1;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, GW_NAME ": unexpected argument '%s' (see --help)\n",
                argv[optind]);
        rc = -1;
    }
    return rc;
}

/*  After the first signal: stop when no request is left at the broker or
    the drain time is up. */
static void s_on_drain(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_t *gw = (gw_t *)arg;
    if (llmq_client_outstanding(gw->client) == 0 ||
        zclock_mono() >= gw->drain_until)
        event_base_loopbreak(gw->base);
}

/*  First SIGINT/SIGTERM: stop accepting, let requests in flight finish
    (up to --drain-ms); a second one stops at once. */
static void s_on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    gw_t *gw = (gw_t *)arg;
    if (++gw->signals > 1 || gw->cfg.drain_ms == 0) {
        event_base_loopbreak(gw->base);
        return;
    }
    if (gw->listener)
        evhttp_del_accept_socket(gw->http, gw->listener);
    gw->listener = NULL;
    gw->drain_until = zclock_mono() + gw->cfg.drain_ms;
    gw->drain = event_new(gw->base, -1, EV_PERSIST, s_on_drain, gw);
    struct timeval tv = {0, 50000};
    event_add(gw->drain, &tv);
    s_on_drain(-1, 0, gw);
}

/*  The data directory and its two subdirectories. */
static int s_data_dir(const char *dir)
{
    char path[4096];
    const char *subs[] = {"", "/files", "/batches"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s%s", dir, subs[i]);
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            llmq_log(NULL, LLMQ_LOG_ERROR, "start_failed",
                     LLMQ_LOG_STR("reason", "--data-dir"),
                     LLMQ_LOG_STR("path", path),
                     LLMQ_LOG_STR("error", strerror(errno)), LLMQ_LOG_END);
            return -1;
        }
    }
    return 0;
}

static void s_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int s_run(gw_t *gw)
{
    int port = 0;
    if (gw->cfg.keys_path && !(gw->keys = gw_keys_new(gw->cfg.keys_path))) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "start_failed",
                 LLMQ_LOG_STR("reason", "--keys: cannot read it"),
                 LLMQ_LOG_STR("path", gw->cfg.keys_path), LLMQ_LOG_END);
        return 1;
    }
    if (s_data_dir(gw->cfg.data_dir) != 0)
        return 1;
    if (gw_broker_start(gw) != 0 || gw_http_start(gw, &port) != 0 ||
        gw_jobs_start(gw) != 0)
        return 1;
    struct event *sigint = evsignal_new(gw->base, SIGINT, s_on_signal, gw);
    struct event *sigterm = evsignal_new(gw->base, SIGTERM, s_on_signal, gw);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    printf("ready " GW_NAME " url=http://%s:%d\n", gw->cfg.host, port);
    fflush(stdout);
    event_base_dispatch(gw->base);
    event_free(sigint);
    event_free(sigterm);
    if (gw->drain)
        event_free(gw->drain);
    return 0;
}

int main(int argc, char **argv)
{
    gw_t gw;
    memset(&gw, 0, sizeof gw);
    gw.cfg.host = "127.0.0.1";
    gw.cfg.port = 8080;
    //  LLMQ_ENDPOINT as for llmq; LLMQ_BROKER, the name this binary first read
    const char *ep = getenv("LLMQ_ENDPOINT");
    if (!ep || !*ep)
        ep = getenv("LLMQ_BROKER");
    gw.cfg.broker = ep && *ep ? ep : LLMQ_DEFAULT_ENDPOINT;
    gw.cfg.curve_cert = getenv("LLMQ_CURVE_CERT");
    gw.cfg.broker_key = getenv("LLMQ_BROKER_KEY");
    gw.cfg.data_dir = "llmq-gateway-data";
    gw.cfg.max_body = 100 << 20;
    gw.cfg.max_headers = 64 << 10;
    gw.cfg.max_conns = 10000;
    gw.cfg.timeout_ms = 600000;
    gw.cfg.drain_ms = 10000;
    gw.cfg.idle_timeout_ms = 620000;
    if (s_parse(argc, argv, &gw.cfg) != 0)
        return 2;
    llmq_log_setup(NULL, GW_NAME, gw.cfg.json_logs, LLMQ_LOG_INFO);
    signal(SIGPIPE, SIG_IGN);
    zsys_init();
    zsys_handler_set(NULL); //  our loop handles signals
    s_raise_nofile();
    gw.base = event_base_new();
    int rc = gw.base ? s_run(&gw) : 1;
    gw_http_stop(&gw);
    gw_jobs_stop(&gw);
    gw_broker_stop(&gw);
    gw_keys_destroy(&gw.keys);
    if (gw.base)
        event_base_free(gw.base);
    return rc;
}
