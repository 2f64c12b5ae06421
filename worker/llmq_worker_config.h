/*  llmq_worker_config.h - everything a worker is told: YAML file,
    environment and flags.

    Precedence, lowest first: built-in defaults; the providers' SDK
    variables (OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY,
    ANTHROPIC_BASE_URL); the YAML file (--config or LLMQ_CONFIG); LLMQ_*
    variables; flags. The API key is never taken from a flag (it would
    show in `ps`): it comes from the variable named by api_key_env, the
    file's api_key, LLMQ_API_KEY or the SDK variable of the provider.

    Ownership: the config owns every string; llmq_worker_config_destroy
    wipes the key.
*/
#ifndef LLMQ_WORKER_CONFIG_H_INCLUDED
#define LLMQ_WORKER_CONFIG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "llmq_models.h"

#ifdef __cplusplus
extern "C" {
#endif

/*  Price of one model, USD per million tokens. */
typedef struct {
    char *model;           /* exact name, "prefix*", or "*" */
    double input;          /* per 1M prompt tokens */
    double output;         /* per 1M completion tokens */
    double batch_discount; /* fraction off through a Batch API (0.5) */
    double cached_input;   /* per 1M cached prompt tokens; 0 = input */
    double reasoning;      /* per 1M reasoning tokens; 0 = output */
} llmq_price_t;

typedef struct {
    char *config_file; /* the YAML file read, or NULL */
    char *broker;      /* backend endpoint */
    char *curve_cert;  /* CURVE: own secret certificate file, or NULL */
    char *broker_key;  /* CURVE: broker public key (Z85 or cert path) */
    char *metrics;     /* Prometheus listener "PORT|HOST:PORT", NULL = off */
    char *name;        /* worker name (hello.worker, res.worker) */
    char *identity;    /* ZMQ routing id */
    char *pool;        /* provider instance name */
    char *provider;    /* openai, anthropic, echo, sim */
    char *base_url;    /* provider base URL */
    char *api_key;     /* secret, may be "" */
    char *api_key_env; /* name of the variable holding the key */
    char **models;     /* models served */
    size_t models_count;
    int64_t capacity;            /* most requests held at once */
    int64_t rpm;                 /* requests per minute of the key, 0 = none */
    int64_t tpm;                 /* tokens per minute of the key, 0 = none */
    int64_t burst_ms;            /* limiter bucket size in ms of rate */
    char *limit_group;           /* workers sharing one key */
    int64_t max_attempts;        /* HTTP attempts per request */
    int64_t timeout_ms;          /* one attempt */
    int64_t connect_timeout_ms;  /* TCP + TLS connect */
    int64_t retry_base_ms;       /* backoff base */
    int64_t retry_cap_ms;        /* backoff cap */
    int64_t breaker_failures;    /* consecutive failures that open it */
    int64_t breaker_cooldown_ms; /* open this long before a probe */
    int64_t drain_ms;            /* SIGTERM: finish in-flight within this */
    int64_t heartbeat_ms;        /* hb interval (protocol: 1000) */
    int64_t default_max_tokens;  /* anthropic max_tokens, token estimates */
    char *anthropic_version;     /* anthropic-version header */
    bool batch_api;              /* the pool can run provider batches */
    llmq_price_t *pricing;       /* price table */
    size_t pricing_count;
    llmq_models_t *known; /* built-in models + the file's capabilities +
                              what /models said (reported in hello) */
    bool verbose;         /* debug logs */
    bool json_logs;       /* JSON log lines */
    bool check_only;      /* health check, print, exit */
} llmq_worker_config_t;

/*  Outcomes of llmq_worker_config_load besides 0. */
#define LLMQ_CONFIG_HELP 1  /* --help or --version printed: exit 0 */
#define LLMQ_CONFIG_ERROR 2 /* message in errbuf: exit 2 */

/*  Build the config from argv, the environment and the YAML file. Returns
    0 with *config_p set, LLMQ_CONFIG_HELP, or LLMQ_CONFIG_ERROR with a
    message ("file:line: ...", "--flag: ...") in errbuf. */
int llmq_worker_config_load(llmq_worker_config_t **config_p, int argc,
                            char **argv, char *errbuf, size_t errlen);

/*  Destroy; wipes the key; NULLs *self_p. Idempotent. */
void llmq_worker_config_destroy(llmq_worker_config_t **self_p);

/*  Print the flags. */
void llmq_worker_config_usage(FILE *out);

/*  Cost in USD of a request to model: the file's pricing (exact name,
    longest "prefix*", "*"), else the built-in price of the model
    (llmq_models.h); 0 if neither knows it. */
double llmq_worker_config_cost(const llmq_worker_config_t *self,
                               const char *model, int64_t prompt_tokens,
                               int64_t completion_tokens, bool batch);

/*  The same with cached prompt tokens and reasoning tokens priced apart
    (cached is part of prompt, reasoning part of completion). */
double llmq_worker_config_price(const llmq_worker_config_t *self,
                                const char *model, const llmq_tokens_t *tokens,
                                bool batch);

int llmq_worker_config_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
