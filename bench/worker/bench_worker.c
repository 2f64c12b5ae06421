/*  bench_worker.c - one llmq-worker under load, measured from outside.

    Plays the broker: binds a ROUTER, starts the real llmq-worker against an
    llmq-sim URL, and keeps the worker full (sends a `req` for every credit
    it grants) for a warm-up and a measured window. Reports completed
    requests per second, worker CPU time per request (utime + stime from
    /proc), and worker RSS per in-flight request ((RSS under load - RSS
    idle) / in-flight).

    usage: bench_worker WORKER_BIN SIM_BASE_URL|echo CAPACITY [SECONDS] [WARMUP]
                        [REQUESTS]

    REQUESTS > 0: a fixed count instead of a time window (no warm-up): send
    exactly that many requests, at most CAPACITY at once, and stop when all
    are answered (bench/worker/callgrind.sh counts instructions this way).
*/
#include <czmq.h>
#include <inttypes.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "llmq_msg.h"
#include "llmq_value.h"

extern char **environ;

/*  /proc/<pid>/<name> open for reading; NULL if the process is gone. */
static FILE *s_proc_file(pid_t pid, const char *name)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, name);
    return fopen(path, "r");
}

/*  utime + stime of a process in ms, -1 if unreadable. */
static int64_t s_cpu_ms(pid_t pid)
{
    char buf[2048];
    FILE *f = s_proc_file(pid, "stat");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    unsigned long utime = 0, stime = 0;
    /*  Fields after ')': state(3) ... utime(14) stime(15). */
    int field = 2;
    for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
        field++;
        if (field == 14)
            utime = strtoul(tok, NULL, 10);
        if (field == 15) {
            stime = strtoul(tok, NULL, 10);
            break;
        }
    }
    long hz = sysconf(_SC_CLK_TCK);
    return (int64_t)((utime + stime) * 1000 / (unsigned long)hz);
}

/*  VmRSS in KB. */
static int64_t s_rss_kb(pid_t pid)
{
    char line[256];
    FILE *f = s_proc_file(pid, "status");
    if (!f)
        return -1;
    int64_t kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtoll(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/*  One run's state: the worker, the socket it talks to, the counters. */
typedef struct {
    zsock_t *router;
    zframe_t *rid; /* the worker's routing id once it said hello */
    pid_t pid;
    int capacity, seconds, warmup;
    int64_t total; /* > 0: exactly this many requests, then stop */
    int64_t credit, in_flight, sent, done, failed, seq;
    int64_t start, measure_at, end_at;
    int64_t cpu0, done0, t0, rss_idle, rss_peak, inflight_at_peak;
    int64_t max_in_flight, lat_sum;
} s_bench_t;

/*  Start the worker against our ROUTER (or the echo provider). */
static int s_spawn_worker(s_bench_t *b, const char *worker_bin,
                          const char *base_url)
{
    int port = zsock_bind(b->router, "tcp://127.0.0.1:*");
    char endpoint[64], cap_text[32];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(cap_text, sizeof cap_text, "%d", b->capacity);
    char *wargv[] = {(char *)worker_bin,
                     "--broker",
                     endpoint,
                     "--provider",
                     "sim",
                     "--base-url",
                     (char *)base_url,
                     "--model",
                     "sim-small",
                     "--capacity",
                     cap_text,
                     "--timeout-ms",
                     "60000",
                     "--name",
                     "bench",
                     NULL};
    if (strcmp(base_url, "echo") == 0) {
        /*  The echo provider: the worker's own cost without HTTP. */
        wargv[4] = "echo";
        wargv[5] = "--pool";
        wargv[6] = "echo";
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int spawned = posix_spawn(&b->pid, worker_bin, &fa, NULL, wargv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (spawned != 0)
        fprintf(stderr, "cannot start %s\n", worker_bin);
    return spawned == 0 ? 0 : -1;
}

/*  Keep the worker full: a request for each credit. */
static void s_fill(s_bench_t *b)
{
    char body[160];
    while (b->rid && b->credit > 0 && (b->total <= 0 || b->sent < b->total)) {
        llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_REQ);
        char id[32];
        snprintf(id, sizeof id, "b%" PRId64, b->seq);
        llmq_msg_set_routing_id(m, b->rid);
        llmq_msg_set_id(m, id);
        llmq_msg_set_op(m, "chat");
        llmq_msg_set_model(m, "sim-small");
        llmq_msg_set_attempt(m, 1);
        int n = snprintf(
            body, sizeof body,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"bench %" PRId64
            "\"}],\"max_tokens\":16}",
            b->seq++);
        zframe_t *payload = llmq_value_from_json_text(body, (size_t)n, NULL, 0);
        llmq_msg_set_payload(m, &payload);
        llmq_msg_send(&m, b->router);
        b->credit--;
        b->sent++;
        b->in_flight++;
    }
    if (b->in_flight > b->max_in_flight)
        b->max_in_flight = b->in_flight;
}

/*  One message from the worker. */
static void s_on_message(s_bench_t *b, llmq_msg_t *m)
{
    switch (llmq_msg_type(m)) {
    case LLMQ_MSG_HELLO:
        zframe_destroy(&b->rid);
        b->rid = zframe_dup(llmq_msg_routing_id(m));
        b->credit = 0;
        b->rss_idle = s_rss_kb(b->pid);
        b->measure_at = zclock_mono() + b->warmup * 1000;
        break;
    case LLMQ_MSG_CREDIT:
        b->credit += llmq_msg_n(m);
        break;
    case LLMQ_MSG_RES:
        b->in_flight--;
        if (llmq_msg_ok(m)) {
            b->done++;
            b->lat_sum += llmq_msg_latency_ms(m);
        } else
            b->failed++;
        break;
    case LLMQ_MSG_HB: {
        llmq_msg_t *hb = llmq_msg_new(LLMQ_MSG_HB);
        llmq_msg_set_routing_id(hb, b->rid);
        llmq_msg_send(&hb, b->router);
        break;
    }
    default:
        break;
    }
}

/*  Start measuring after the warm-up; sample RSS while nearly full. */
static void s_sample(s_bench_t *b)
{
    int64_t now = zclock_mono();
    if (b->measure_at && !b->end_at && now >= b->measure_at) {
        b->cpu0 = s_cpu_ms(b->pid);
        b->done0 = b->done;
        b->t0 = now;
        b->end_at = now + b->seconds * 1000;
        if (b->total > 0) {
            b->end_at = INT64_MAX; /* until every request is answered */
            b->measure_at = 0;
        }
    }
    if (b->end_at && b->in_flight >= b->capacity * 9 / 10) {
        int64_t rss = s_rss_kb(b->pid);
        if (rss > b->rss_peak) {
            b->rss_peak = rss;
            b->inflight_at_peak = b->in_flight;
        }
    }
}

/*  Drive the worker until the measured time (or request count) is over. */
static void s_run(s_bench_t *b)
{
    zpoller_t *poller = zpoller_new(b->router, NULL);
    while (true) {
        int64_t now = zclock_mono();
        if (b->end_at && now >= b->end_at)
            break;
        if (b->total > 0 && b->done + b->failed >= b->total)
            break;
        if (!b->rid && now - b->start > 30000) {
            fprintf(stderr, "no hello from the worker\n");
            break;
        }
        s_fill(b);
        if (!zpoller_wait(poller, 200))
            continue;
        for (int k = 0; k < 10000; k++) {
            if (!(zsock_events(b->router) & ZMQ_POLLIN))
                break;
            llmq_msg_t *m = llmq_msg_recv(b->router);
            if (!m)
                break;
            s_on_message(b, m);
            llmq_msg_destroy(&m);
        }
        s_sample(b);
    }
    zpoller_destroy(&poller);
}

static void s_report(const s_bench_t *b)
{
    int64_t cpu1 = s_cpu_ms(b->pid);
    int64_t completed = b->done - b->done0;
    double elapsed =
        b->t0 ? (double)(zclock_mono() - b->t0) / 1000.0 : b->seconds;
    double rate = elapsed > 0 ? (double)completed / elapsed : 0;
    double cpu_us =
        completed ? (double)(cpu1 - b->cpu0) * 1000.0 / (double)completed : 0;
    double rss_per = b->inflight_at_peak ? (double)(b->rss_peak - b->rss_idle) /
                                               (double)b->inflight_at_peak
                                         : 0;
    printf("capacity=%d seconds=%d completed=%" PRId64 " failed=%" PRId64
           " req_per_s=%.0f "
           "cpu_us_per_req=%.1f cpu_pct=%.0f rss_idle_kb=%" PRId64
           " rss_load_kb=%" PRId64 " in_flight=%" PRId64
           " max_in_flight=%" PRId64
           " rss_kb_per_in_flight=%.1f worker_latency_ms=%.0f\n",
           b->capacity, b->seconds, completed, b->failed, rate, cpu_us,
           elapsed > 0 ? (double)(cpu1 - b->cpu0) / (elapsed * 10.0) : 0,
           b->rss_idle, b->rss_peak, b->inflight_at_peak, b->max_in_flight,
           rss_per, b->done ? (double)b->lat_sum / b->done : 0.0);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_worker WORKER_BIN SIM_BASE_URL CAPACITY "
                        "[SECONDS] [WARMUP] [TOTAL]\n");
        return 2;
    }
    s_bench_t b = {.capacity = atoi(argv[3]),
                   .seconds = argc > 4 ? atoi(argv[4]) : 20,
                   .warmup = argc > 5 ? atoi(argv[5]) : 5,
                   .total = argc > 6 ? atoll(argv[6]) : 0};
    if (b.total > 0)
        b.warmup = 0;
    zsys_init();
    b.router = zsock_new(ZMQ_ROUTER);
    zsock_set_sndhwm(b.router, 0);
    zsock_set_rcvhwm(b.router, 0);
    if (s_spawn_worker(&b, argv[1], argv[2]) < 0) {
        zsock_destroy(&b.router);
        return 1;
    }
    b.start = zclock_mono();
    s_run(&b);
    s_report(&b);
    kill(b.pid, SIGTERM);
    kill(b.pid, SIGTERM);
    int status;
    waitpid(b.pid, &status, 0);
    zframe_destroy(&b.rid);
    zsock_destroy(&b.router);
    return b.failed ? 1 : 0;
}
