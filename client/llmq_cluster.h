/*  llmq_cluster.h - an embedded local cluster: a broker, N workers and (for
    the default provider) an llmq-sim, started as child processes.

    `llmq run` and `llmq chat` use it when no broker was given and none
    answers at the default endpoint. The binaries are looked up in
    $LLMQ_BIN_DIR, next to the running executable (/proc/self/exe), then on
    PATH. Each child is started with ephemeral ports; the cluster waits for
    its `ready` line on stdout and reads the real addresses from it. The
    children die with the parent (PR_SET_PDEATHSIG) even on kill -9, and
    llmq_cluster_destroy() stops them. Their stderr goes to log files in a
    private temp directory (or to our stderr when verbose).

    Provider choice when opts->provider is NULL: the config file's
    `provider:`, else `openai` when OPENAI_API_KEY is set (at
    OPENAI_BASE_URL when set), else `anthropic` when ANTHROPIC_API_KEY is
    set (at ANTHROPIC_BASE_URL when set), else `sim` with a local llmq-sim,
    whose results are labelled as simulated. With a config file, its `models:`
    and `base_url:` are used unless options override them (the file is read
    for these three top-level keys only; the workers read all of it).

    Ownership: the cluster object belongs to the caller; string results are
    borrowed from it.
*/
#ifndef LLMQ_CLUSTER_H_INCLUDED
#define LLMQ_CLUSTER_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int workers;               /* worker processes, default 4 */
    int capacity;              /* per worker, 0: the worker's default */
    const char *provider;      /* openai, anthropic, echo, sim; NULL: auto */
    const char *base_url;      /* provider URL; NULL: env or sim */
    const char *model;         /* default model; NULL: the provider's */
    const char *const *models; /* more models the workers serve (input's) */
    size_t models_count;       /* how many */
    const char *config;        /* worker YAML config (llmq-worker --config) */
    int sim_latency_ms;        /* llmq-sim latency, default 50 */
    bool verbose;              /* children's stderr to ours */
    const char *batch_db;      /* durable batches: the broker's SQLite file
                                  (kept across runs) and workers with
                                  --batch-api; NULL: no batches */
    int batch_poll_ms;         /* broker's provider poll period, 0: its own */
} llmq_cluster_opts_t;

typedef struct _llmq_cluster_t llmq_cluster_t;

/*  Start a cluster. Returns NULL with a reason in err on failure (children
    already started are stopped); errno is then EINVAL if a child rejected
    its flags or configuration (it exited with code 2). */
llmq_cluster_t *llmq_cluster_new(const llmq_cluster_opts_t *opts, char *err,
                                 size_t errlen);

/*  Stop every child (SIGTERM, then SIGKILL after a grace period) and free
    the cluster. NULLs *self_p. Idempotent. */
void llmq_cluster_destroy(llmq_cluster_t **self_p);

/*  Send SIGTERM to every child; async-signal-safe (for signal handlers). */
void llmq_cluster_signal(llmq_cluster_t *self);

/*  The name ("broker", "sim", "worker-2") of a child that has exited since
    the last call (it is reaped), or NULL when all still run. Borrowed. */
const char *llmq_cluster_dead(llmq_cluster_t *self);

/*  What a caller needs to know about a running cluster. The strings are
    borrowed from the cluster (valid until it is destroyed). */
typedef struct {
    const char *endpoint; /* the broker frontend clients connect to */
    const char *provider; /* the provider the workers use */
    const char *model;    /* the model they serve by default */
    const char *log_dir;  /* the directory of the children's logs */
    bool simulated;       /* the provider is llmq-sim: simulated results */
} llmq_cluster_info_t;

void llmq_cluster_info(const llmq_cluster_t *self, llmq_cluster_info_t *info);

/*  Find a binary of the llmq suite (LLMQ_BIN_DIR, next to this executable,
    PATH). Returns a fresh path or NULL. */
char *llmq_cluster_find_binary(const char *name);

#ifdef __cplusplus
}
#endif
#endif
