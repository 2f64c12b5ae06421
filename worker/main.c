/*  main.c - llmq-worker: read the config, run the worker, exit with its
    code (0 stopped cleanly, 2 bad flags or config, 3 API key rejected,
    4 provider unreachable with --check-only, 1 other failure). */
#include <czmq.h>
#include <stdio.h>

#include "llmq_wlog.h"
#include "llmq_worker.h"
#include "llmq_worker_config.h"

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
    llmq_wlog_setup("llmq-worker", cfg->json_logs, cfg->verbose);
    llmq_log_add_secret(NULL, cfg->api_key); //  never in a log line
    /*  CZMQ would install its own SIGINT/SIGTERM handlers: the worker
        drains on SIGTERM instead. */
    zsys_handler_set(NULL);
    zsys_init();
    llmq_worker_t *worker = llmq_worker_new(&cfg, err, sizeof err);
    if (!worker) {
        fprintf(stderr, "llmq-worker: %s\n", err);
        return 1;
    }
    rc = llmq_worker_run(worker);
    llmq_worker_destroy(&worker);
    return rc;
}
