/*  main.c - llmq-worker: flags, signals, and the worker actor.

    Thin on purpose, like broker/main.c: everything the worker does is in
    llmq_worker.c so that tests can run it in-process. Here: read the config
    (bad flags or config: exit 2), start the actor, print its `ready` line,
    turn SIGTERM/SIGINT into a drain (a second signal stops at once), and
    exit with the actor's code (0 stopped cleanly, 3 API key rejected, 4
    provider unreachable with --check-only, 1 other failure).
*/
#include <czmq.h>
#include <signal.h>
#include <stdio.h>

#include "llmq_log.h"
#include "llmq_worker.h"
#include "llmq_worker_config.h"

static volatile sig_atomic_t s_signals = 0;

static void s_on_signal(int signum)
{
    (void)signum;
    s_signals++;
}

/*  Our own handlers: CZMQ's would make the actor's sockets fail with EINTR
    instead of letting the worker drain. */
static void s_signals_install(void)
{
    zsys_handler_set(NULL);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = s_on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/*  One event from the actor (llmq_worker.h): print the ready line or the
    stop message. Returns the exit code once the worker stopped, else -1. */
static int s_on_event(zactor_t *worker)
{
    zmsg_t *msg = zmsg_recv(worker);
    char *event = msg ? zmsg_popstr(msg) : NULL;
    char *first = msg ? zmsg_popstr(msg) : NULL;
    char *second = msg ? zmsg_popstr(msg) : NULL;
    int rc = -1;
    if (!event)
        rc = LLMQ_WORKER_EXIT_FAILURE;
    else if (streq(event, "READY")) {
        printf("ready llmq-worker worker=%s%s%s\n", first ? first : "",
               second && *second ? " metrics=" : "", second ? second : "");
        fflush(stdout);
    } else if (streq(event, "DRAINED"))
        rc = LLMQ_WORKER_EXIT_OK;
    else if (streq(event, "STOPPED")) {
        rc = first ? atoi(first) : LLMQ_WORKER_EXIT_FAILURE;
        if (second && *second && rc == LLMQ_WORKER_EXIT_OK)
            printf("ok: %s\n", second);
        else if (second && *second)
            fprintf(stderr, "llmq-worker: %s\n", second);
        fflush(stdout);
    }
    free(event);
    free(first);
    free(second);
    zmsg_destroy(&msg);
    return rc;
}

/*  Until the worker stops: events, and signals (polled: the handler only
    counts). The first signal drains; a second stops at once ($TERM, sent
    by zactor_destroy). */
static int s_run(zactor_t *worker)
{
    zpoller_t *poller = zpoller_new(worker, NULL);
    bool draining = false;
    int rc = -1;
    while (rc < 0) {
        if (zpoller_wait(poller, 100) == worker)
            rc = s_on_event(worker);
        if (rc < 0 && s_signals > 1)
            rc = LLMQ_WORKER_EXIT_OK;
        else if (rc < 0 && s_signals && !draining) {
            draining = true;
            zstr_send(worker, "DRAIN");
        }
    }
    zpoller_destroy(&poller);
    return rc;
}

int main(int argc, char **argv)
{
    char err[1024] = "";
    llmq_worker_config_t *cfg = NULL;
    int rc = llmq_worker_config_load(&cfg, argc, argv, err, sizeof err);
    if (rc == LLMQ_CONFIG_HELP)
        return 0;
    if (rc != 0) {
        fprintf(stderr, "llmq-worker: %s\n", err);
        return 2;
    }
    llmq_log_setup(NULL, "llmq-worker", cfg->json_logs,
                   cfg->verbose ? LLMQ_LOG_DEBUG : LLMQ_LOG_INFO);
    llmq_log_add_secret(NULL, cfg->api_key); //  never in a log line
    s_signals_install();
    zsys_init();
    zactor_t *worker = zactor_new(llmq_worker, &cfg);
    if (!worker) {
        llmq_worker_config_destroy(&cfg);
        fprintf(stderr, "llmq-worker: cannot start the worker thread\n");
        return LLMQ_WORKER_EXIT_FAILURE;
    }
    rc = s_run(worker);
    zactor_destroy(&worker);
    return rc;
}
