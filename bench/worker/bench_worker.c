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

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_worker WORKER_BIN SIM_BASE_URL CAPACITY "
                        "[SECONDS] [WARMUP]\n");
        return 2;
    }
    const char *worker_bin = argv[1];
    const char *base_url = argv[2];
    int capacity = atoi(argv[3]);
    int seconds = argc > 4 ? atoi(argv[4]) : 20;
    int warmup = argc > 5 ? atoi(argv[5]) : 5;
    int64_t total = argc > 6 ? atoll(argv[6]) : 0;
    if (total > 0)
        warmup = 0;

    zsys_init();
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    zsock_set_sndhwm(router, 0);
    zsock_set_rcvhwm(router, 0);
    int port = zsock_bind(router, "tcp://127.0.0.1:*");
    char endpoint[64], cap_text[32];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    snprintf(cap_text, sizeof cap_text, "%d", capacity);
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
    pid_t pid;
    int spawned = posix_spawn(&pid, worker_bin, &fa, NULL, wargv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (spawned != 0) {
        fprintf(stderr, "cannot start %s\n", worker_bin);
        return 1;
    }
    zpoller_t *poller = zpoller_new(router, NULL);
    zframe_t *rid = NULL;
    int64_t credit = 0, in_flight = 0, sent = 0, done = 0, failed = 0, seq = 0;
    int64_t start = zclock_mono(), measure_at = 0, end_at = 0;
    int64_t cpu0 = 0, done0 = 0, t0 = 0, rss_idle = 0, rss_peak = 0,
            inflight_at_peak = 0;
    int64_t max_in_flight = 0, lat_sum = 0;
    char body[160];
    while (true) {
        int64_t now = zclock_mono();
        if (end_at && now >= end_at)
            break;
        if (total > 0 && done + failed >= total)
            break;
        if (!rid && now - start > 30000) {
            fprintf(stderr, "no hello from the worker\n");
            break;
        }
        /*  Keep the worker full. */
        while (rid && credit > 0 && (total <= 0 || sent < total)) {
            llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_REQ);
            char id[32];
            snprintf(id, sizeof id, "b%" PRId64, seq);
            llmq_msg_set_routing_id(m, rid);
            llmq_msg_set_id(m, id);
            llmq_msg_set_op(m, "chat");
            llmq_msg_set_model(m, "sim-small");
            llmq_msg_set_attempt(m, 1);
            int n = snprintf(
                body, sizeof body,
                "{\"messages\":[{\"role\":\"user\",\"content\":\"bench %" PRId64
                "\"}],\"max_tokens\":16}",
                seq++);
            zframe_t *payload =
                llmq_value_from_json_text(body, (size_t)n, NULL, 0);
            llmq_msg_set_payload(m, &payload);
            llmq_msg_send(&m, router);
            credit--;
            sent++;
            in_flight++;
        }
        if (in_flight > max_in_flight)
            max_in_flight = in_flight;
        if (!zpoller_wait(poller, 200))
            continue;
        for (int k = 0; k < 10000; k++) {
            if (!(zsock_events(router) & ZMQ_POLLIN))
                break;
            llmq_msg_t *m = llmq_msg_recv(router);
            if (!m)
                break;
            switch (llmq_msg_type(m)) {
            case LLMQ_MSG_HELLO:
                zframe_destroy(&rid);
                rid = zframe_dup(llmq_msg_routing_id(m));
                credit = 0;
                rss_idle = s_rss_kb(pid);
                measure_at = zclock_mono() + warmup * 1000;
                break;
            case LLMQ_MSG_CREDIT:
                credit += llmq_msg_n(m);
                break;
            case LLMQ_MSG_RES:
                in_flight--;
                if (llmq_msg_ok(m)) {
                    done++;
                    lat_sum += llmq_msg_latency_ms(m);
                } else
                    failed++;
                break;
            case LLMQ_MSG_HB: {
                llmq_msg_t *hb = llmq_msg_new(LLMQ_MSG_HB);
                llmq_msg_set_routing_id(hb, rid);
                llmq_msg_send(&hb, router);
                break;
            }
            default:
                break;
            }
            llmq_msg_destroy(&m);
        }
        now = zclock_mono();
        if (measure_at && !end_at && now >= measure_at) {
            cpu0 = s_cpu_ms(pid);
            done0 = done;
            t0 = now;
            end_at = now + seconds * 1000;
            if (total > 0) {
                end_at = INT64_MAX; /* until every request is answered */
                measure_at = 0;
            }
        }
        if (end_at && in_flight >= capacity * 9 / 10) {
            int64_t rss = s_rss_kb(pid);
            if (rss > rss_peak) {
                rss_peak = rss;
                inflight_at_peak = in_flight;
            }
        }
    }
    int64_t cpu1 = s_cpu_ms(pid);
    int64_t completed = done - done0;
    double elapsed = t0 ? (double)(zclock_mono() - t0) / 1000.0 : seconds;
    double rate = elapsed > 0 ? (double)completed / elapsed : 0;
    double cpu_us =
        completed ? (double)(cpu1 - cpu0) * 1000.0 / (double)completed : 0;
    double rss_per = inflight_at_peak ? (double)(rss_peak - rss_idle) /
                                            (double)inflight_at_peak
                                      : 0;
    printf("capacity=%d seconds=%d completed=%" PRId64 " failed=%" PRId64
           " req_per_s=%.0f "
           "cpu_us_per_req=%.1f cpu_pct=%.0f rss_idle_kb=%" PRId64
           " rss_load_kb=%" PRId64 " in_flight=%" PRId64
           " max_in_flight=%" PRId64
           " rss_kb_per_in_flight=%.1f worker_latency_ms=%.0f\n",
           capacity, seconds, completed, failed, rate, cpu_us,
           elapsed > 0 ? (double)(cpu1 - cpu0) / (elapsed * 10.0) : 0, rss_idle,
           rss_peak, inflight_at_peak, max_in_flight, rss_per,
           done ? (double)lat_sum / done : 0.0);
    kill(pid, SIGTERM);
    kill(pid, SIGTERM);
    int status;
    waitpid(pid, &status, 0);
    zframe_destroy(&rid);
    zpoller_destroy(&poller);
    zsock_destroy(&router);
    return failed ? 1 : 0;
}
