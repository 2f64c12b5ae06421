/*  llmq_worker_config.c - worker settings from YAML, environment, flags.

    Design: the YAML file is loaded by libcyaml into a struct that mirrors
    the file (s_yaml_t), whose zero values mean "not set"; the layers are
    then applied in order onto llmq_worker_config_t. libcyaml reports
    errors through its log callback with a backtrace that names the line;
    llmq_yaml (shared with the broker's routes file) turns them into one
    "file:line: message".
*/
#include "llmq_worker_config.h"
#include "llmq_duration.h"
#include "llmq_curve.h"
#include "llmq_yaml.h"

#include <errno.h>
#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define s_MAX_CONFIG_BYTES (1 << 20) //  A worker config file, at most

/*  --- the YAML file's shape ---------------------------------------------- */

typedef struct {
    int64_t rpm, tpm, burst_ms;
} s_y_limits_t;

typedef struct {
    int64_t max_attempts, base_ms, cap_ms;
} s_y_retry_t;

typedef struct {
    int64_t failures, cooldown_ms;
} s_y_breaker_t;

typedef struct {
    char *version;
    int64_t default_max_tokens;
} s_y_anthropic_t;

/*  One entry of `capabilities`: what this worker knows of a model. */
typedef struct {
    char *model;
    int64_t context, max_output;
    char **features; /* chat, embeddings, streaming, tools, images */
    unsigned features_count;
} s_y_cap_t;

typedef struct {
    char *broker, *name, *pool, *provider, *base_url, *api_key, *api_key_env;
    char *limit_group, *curve_cert, *broker_key, *metrics;
    char **models;
    unsigned models_count;
    int64_t capacity, timeout_ms, connect_timeout_ms, drain_ms, heartbeat_ms;
    bool batch_api, verbose, json_logs;
    s_y_limits_t limits;
    s_y_retry_t retry;
    s_y_breaker_t breaker;
    s_y_anthropic_t anthropic;
    llmq_price_t *pricing;
    unsigned pricing_count;
    s_y_cap_t *capabilities;
    unsigned capabilities_count;
} s_yaml_t;

static const cyaml_schema_value_t s_string_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 1, 256),
};

static const cyaml_schema_field_t s_limits_fields[] = {
    CYAML_FIELD_INT("rpm", CYAML_FLAG_OPTIONAL, s_y_limits_t, rpm),
    CYAML_FIELD_INT("tpm", CYAML_FLAG_OPTIONAL, s_y_limits_t, tpm),
    CYAML_FIELD_INT("burst_ms", CYAML_FLAG_OPTIONAL, s_y_limits_t, burst_ms),
    CYAML_FIELD_END};

static const cyaml_schema_field_t s_retry_fields[] = {
    CYAML_FIELD_INT("max_attempts", CYAML_FLAG_OPTIONAL, s_y_retry_t,
                    max_attempts),
    CYAML_FIELD_INT("base_ms", CYAML_FLAG_OPTIONAL, s_y_retry_t, base_ms),
    CYAML_FIELD_INT("cap_ms", CYAML_FLAG_OPTIONAL, s_y_retry_t, cap_ms),
    CYAML_FIELD_END};

static const cyaml_schema_field_t s_breaker_fields[] = {
    CYAML_FIELD_INT("failures", CYAML_FLAG_OPTIONAL, s_y_breaker_t, failures),
    CYAML_FIELD_INT("cooldown_ms", CYAML_FLAG_OPTIONAL, s_y_breaker_t,
                    cooldown_ms),
    CYAML_FIELD_END};

static const cyaml_schema_field_t s_anthropic_fields[] = {
    CYAML_FIELD_STRING_PTR("version", CYAML_FLAG_OPTIONAL, s_y_anthropic_t,
                           version, 1, 64),
    CYAML_FIELD_INT("default_max_tokens", CYAML_FLAG_OPTIONAL, s_y_anthropic_t,
                    default_max_tokens),
    CYAML_FIELD_END};

static const cyaml_schema_field_t s_price_fields[] = {
    CYAML_FIELD_STRING_PTR("model", CYAML_FLAG_DEFAULT, llmq_price_t, model, 1,
                           256),
    CYAML_FIELD_FLOAT("input", CYAML_FLAG_OPTIONAL, llmq_price_t, input),
    CYAML_FIELD_FLOAT("output", CYAML_FLAG_OPTIONAL, llmq_price_t, output),
    CYAML_FIELD_FLOAT("batch_discount", CYAML_FLAG_OPTIONAL, llmq_price_t,
                      batch_discount),
    CYAML_FIELD_FLOAT("cached_input", CYAML_FLAG_OPTIONAL, llmq_price_t,
                      cached_input),
    CYAML_FIELD_FLOAT("reasoning", CYAML_FLAG_OPTIONAL, llmq_price_t,
                      reasoning),
    CYAML_FIELD_END};

static const cyaml_schema_value_t s_price_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, llmq_price_t, s_price_fields),
};

static const cyaml_schema_field_t s_cap_fields[] = {
    CYAML_FIELD_STRING_PTR("model", CYAML_FLAG_DEFAULT, s_y_cap_t, model, 1,
                           256),
    CYAML_FIELD_INT("context", CYAML_FLAG_OPTIONAL, s_y_cap_t, context),
    CYAML_FIELD_INT("max_output", CYAML_FLAG_OPTIONAL, s_y_cap_t, max_output),
    CYAML_FIELD_SEQUENCE("features", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
                         s_y_cap_t, features, &s_string_entry, 0, 8),
    CYAML_FIELD_END};

static const cyaml_schema_value_t s_cap_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, s_y_cap_t, s_cap_fields),
};

static const cyaml_schema_field_t s_top_fields[] = {
    CYAML_FIELD_STRING_PTR("broker", CYAML_FLAG_OPTIONAL, s_yaml_t, broker, 1,
                           1024),
    CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_OPTIONAL, s_yaml_t, name, 1, 100),
    CYAML_FIELD_STRING_PTR("pool", CYAML_FLAG_OPTIONAL, s_yaml_t, pool, 1, 128),
    CYAML_FIELD_STRING_PTR("provider", CYAML_FLAG_OPTIONAL, s_yaml_t, provider,
                           1, 32),
    CYAML_FIELD_STRING_PTR("base_url", CYAML_FLAG_OPTIONAL, s_yaml_t, base_url,
                           1, 1024),
    CYAML_FIELD_STRING_PTR("api_key", CYAML_FLAG_OPTIONAL, s_yaml_t, api_key, 0,
                           1024),
    CYAML_FIELD_STRING_PTR("api_key_env", CYAML_FLAG_OPTIONAL, s_yaml_t,
                           api_key_env, 1, 256),
    CYAML_FIELD_STRING_PTR("limit_group", CYAML_FLAG_OPTIONAL, s_yaml_t,
                           limit_group, 1, 128),
    CYAML_FIELD_STRING_PTR("curve_cert", CYAML_FLAG_OPTIONAL, s_yaml_t,
                           curve_cert, 1, 1024),
    CYAML_FIELD_STRING_PTR("broker_key", CYAML_FLAG_OPTIONAL, s_yaml_t,
                           broker_key, 1, 1024),
    CYAML_FIELD_STRING_PTR("metrics", CYAML_FLAG_OPTIONAL, s_yaml_t, metrics, 1,
                           300),
    CYAML_FIELD_SEQUENCE("models", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
                         s_yaml_t, models, &s_string_entry, 0, 256),
    CYAML_FIELD_INT("capacity", CYAML_FLAG_OPTIONAL, s_yaml_t, capacity),
    CYAML_FIELD_INT("timeout_ms", CYAML_FLAG_OPTIONAL, s_yaml_t, timeout_ms),
    CYAML_FIELD_INT("connect_timeout_ms", CYAML_FLAG_OPTIONAL, s_yaml_t,
                    connect_timeout_ms),
    CYAML_FIELD_INT("drain_ms", CYAML_FLAG_OPTIONAL, s_yaml_t, drain_ms),
    CYAML_FIELD_INT("heartbeat_ms", CYAML_FLAG_OPTIONAL, s_yaml_t,
                    heartbeat_ms),
    CYAML_FIELD_BOOL("batch_api", CYAML_FLAG_OPTIONAL, s_yaml_t, batch_api),
    CYAML_FIELD_BOOL("verbose", CYAML_FLAG_OPTIONAL, s_yaml_t, verbose),
    CYAML_FIELD_BOOL("json_logs", CYAML_FLAG_OPTIONAL, s_yaml_t, json_logs),
    CYAML_FIELD_MAPPING("limits", CYAML_FLAG_OPTIONAL, s_yaml_t, limits,
                        s_limits_fields),
    CYAML_FIELD_MAPPING("retry", CYAML_FLAG_OPTIONAL, s_yaml_t, retry,
                        s_retry_fields),
    CYAML_FIELD_MAPPING("breaker", CYAML_FLAG_OPTIONAL, s_yaml_t, breaker,
                        s_breaker_fields),
    CYAML_FIELD_MAPPING("anthropic", CYAML_FLAG_OPTIONAL, s_yaml_t, anthropic,
                        s_anthropic_fields),
    CYAML_FIELD_SEQUENCE("pricing", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
                         s_yaml_t, pricing, &s_price_entry, 0, 4096),
    CYAML_FIELD_SEQUENCE("capabilities",
                         CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, s_yaml_t,
                         capabilities, &s_cap_entry, 0, 4096),
    CYAML_FIELD_END};

static const cyaml_schema_value_t s_top_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, s_yaml_t, s_top_fields),
};

/*  --- helpers --------------------------------------------------------------
 */

static void s_set(char **dst, const char *value)
{
    if (!value)
        return;
    char *copy = strdup(value);
    if (!copy)
        return;
    free(*dst);
    *dst = copy;
}

static void s_wipe(char *s)
{
    if (s) {
        volatile char *p = s;
        while (*p)
            *p++ = 0;
    }
}

static void s_models_clear(llmq_worker_config_t *self)
{
    for (size_t i = 0; i < self->models_count; i++)
        free(self->models[i]);
    free(self->models);
    self->models = NULL;
    self->models_count = 0;
}

static void s_models_add(llmq_worker_config_t *self, const char *model)
{
    char **nm =
        realloc(self->models, (self->models_count + 1) * sizeof(char *));
    if (!nm)
        return;
    self->models = nm;
    self->models[self->models_count] = strdup(model);
    if (self->models[self->models_count])
        self->models_count++;
}

/*  "a,b,c" -> models. */
static void s_models_csv(llmq_worker_config_t *self, const char *csv)
{
    s_models_clear(self);
    char *copy = strdup(csv);
    if (!copy)
        return;
    char *save = NULL;
    for (char *tok = strtok_r(copy, ", ", &save); tok;
         tok = strtok_r(NULL, ", ", &save))
        s_models_add(self, tok);
    free(copy);
}

/*  Strict integer in [lo, hi]; -1 with a message otherwise. */
static int s_int(const char *what, const char *text, int64_t lo, int64_t hi,
                 int64_t *out, char *errbuf, size_t errlen)
{
    char *end = NULL;
    errno = 0;
    long long v = text ? strtoll(text, &end, 10) : 0;
    if (!text || !*text || *end || errno || v < lo || v > hi) {
        snprintf(errbuf, errlen,
                 "%s: expected an integer from %lld to %lld, got '%s'", what,
                 (long long)lo, (long long)hi, text ? text : "");
        return -1;
    }
    *out = v;
    return 0;
}

/*  A duration flag: a bare number is ms, or a unit (500ms, 2s, 1m): the
    parser every llmq binary shares (llmq_duration.h). */
static int s_ms(const char *what, const char *text, int64_t lo, int64_t hi,
                int64_t *out, char *errbuf, size_t errlen)
{
    int64_t ms = 0;
    if (llmq_duration_parse(text, &ms, NULL) || ms < lo || ms > hi) {
        snprintf(errbuf, errlen,
                 "%s: expected a duration of at least %lld ms (a bare number "
                 "is ms; or 500ms, 2s, 1m), got '%s'",
                 what, (long long)lo, text ? text : "");
        return -1;
    }
    *out = ms;
    return 0;
}

/*  --- defaults, file, env, flags ----------------------------------------- */

static void s_defaults(llmq_worker_config_t *self)
{
    s_set(&self->broker, "tcp://127.0.0.1:5556");
    self->capacity = 256;
    self->burst_ms = 1000;
    self->max_attempts = 4;
    self->timeout_ms = 120000;
    self->connect_timeout_ms = 10000;
    self->retry_base_ms = 500; /* like the official SDKs: 0.5 s, 8 s cap */
    self->retry_cap_ms = 8000;
    self->breaker_failures = 5;
    self->breaker_cooldown_ms = 30000;
    self->drain_ms = 30000;
    self->heartbeat_ms = 1000;
    self->default_max_tokens = 1024;
    s_set(&self->anthropic_version, "2023-06-01");
}

enum {
    F_BROKER = 1000,
    F_NAME,
    F_POOL,
    F_PROVIDER,
    F_BASE_URL,
    F_MODEL,
    F_CAPACITY,
    F_RPM,
    F_TPM,
    F_BURST,
    F_GROUP,
    F_ATTEMPTS,
    F_TIMEOUT,
    F_CONNECT_TIMEOUT,
    F_RETRY_BASE,
    F_RETRY_CAP,
    F_BRK_FAIL,
    F_BRK_COOL,
    F_DRAIN,
    F_CONFIG,
    F_VERBOSE,
    F_JSON,
    F_HELP,
    F_VERSION,
    F_CHECK,
    F_KEY_ENV,
    F_MAX_TOKENS,
    F_BATCH_API,
    F_HB,
    F_CURVE_CERT,
    F_BROKER_KEY,
    F_METRICS
};

/*  The settings, as tables: a string, a number in [lo, hi] (durations for
    the -ms flags) or a switch, each with its flag, its field and its place
    in the YAML file (S_NONE: flags only). */
#define S_FIELD(name) offsetof(llmq_worker_config_t, name)
#define S_YAML(name) offsetof(s_yaml_t, name)
#define S_NONE SIZE_MAX

static const struct {
    int flag;
    size_t field; /* char * */
    size_t yaml;  /* char * */
} s_str_flags[] = {
    {F_BROKER, S_FIELD(broker), S_YAML(broker)},
    {F_NAME, S_FIELD(name), S_YAML(name)},
    {F_POOL, S_FIELD(pool), S_YAML(pool)},
    {F_PROVIDER, S_FIELD(provider), S_YAML(provider)},
    {F_BASE_URL, S_FIELD(base_url), S_YAML(base_url)},
    {F_GROUP, S_FIELD(limit_group), S_YAML(limit_group)},
    {F_KEY_ENV, S_FIELD(api_key_env), S_YAML(api_key_env)},
    {F_CURVE_CERT, S_FIELD(curve_cert), S_YAML(curve_cert)},
    {F_BROKER_KEY, S_FIELD(broker_key), S_YAML(broker_key)},
    {F_METRICS, S_FIELD(metrics), S_YAML(metrics)},
};

static const struct {
    int flag;
    size_t field; /* int64_t */
    size_t yaml;  /* int64_t, 0 there: not set */
    int64_t lo, hi;
} s_num_flags[] = {
    {F_CAPACITY, S_FIELD(capacity), S_YAML(capacity), 1, 100000},
    {F_RPM, S_FIELD(rpm), S_YAML(limits.rpm), 0, INT64_MAX / 2},
    {F_TPM, S_FIELD(tpm), S_YAML(limits.tpm), 0, INT64_MAX / 2},
    {F_BURST, S_FIELD(burst_ms), S_YAML(limits.burst_ms), 1, INT64_MAX / 2},
    {F_ATTEMPTS, S_FIELD(max_attempts), S_YAML(retry.max_attempts), 1, 100},
    {F_TIMEOUT, S_FIELD(timeout_ms), S_YAML(timeout_ms), 1, INT64_MAX / 2},
    {F_CONNECT_TIMEOUT, S_FIELD(connect_timeout_ms), S_YAML(connect_timeout_ms),
     1, INT64_MAX / 2},
    {F_RETRY_BASE, S_FIELD(retry_base_ms), S_YAML(retry.base_ms), 0,
     INT64_MAX / 2},
    {F_RETRY_CAP, S_FIELD(retry_cap_ms), S_YAML(retry.cap_ms), 0,
     INT64_MAX / 2},
    {F_BRK_FAIL, S_FIELD(breaker_failures), S_YAML(breaker.failures), 1,
     INT64_MAX / 2},
    {F_BRK_COOL, S_FIELD(breaker_cooldown_ms), S_YAML(breaker.cooldown_ms), 1,
     INT64_MAX / 2},
    {F_DRAIN, S_FIELD(drain_ms), S_YAML(drain_ms), 0, INT64_MAX / 2},
    {F_HB, S_FIELD(heartbeat_ms), S_YAML(heartbeat_ms), 10, INT64_MAX / 2},
    {F_MAX_TOKENS, S_FIELD(default_max_tokens),
     S_YAML(anthropic.default_max_tokens), 1, INT64_MAX / 2},
};

static const struct {
    int flag;
    size_t field; /* bool */
    size_t yaml;  /* bool, or S_NONE */
} s_bool_flags[] = {
    {F_BATCH_API, S_FIELD(batch_api), S_YAML(batch_api)},
    {F_CHECK, S_FIELD(check_only), S_NONE},
    {F_VERBOSE, S_FIELD(verbose), S_YAML(verbose)},
    {F_JSON, S_FIELD(json_logs), S_YAML(json_logs)},
};

#define S_COUNT(table) (sizeof table / sizeof table[0])

/*  The file's settings over the defaults. */
static void s_apply_yaml(llmq_worker_config_t *self, s_yaml_t *y)
{
    char *base = (char *)self, *file = (char *)y;
    for (size_t i = 0; i < S_COUNT(s_str_flags); i++)
        s_set((char **)(base + s_str_flags[i].field),
              *(char **)(file + s_str_flags[i].yaml));
    for (size_t i = 0; i < S_COUNT(s_num_flags); i++) {
        int64_t v = *(int64_t *)(file + s_num_flags[i].yaml);
        if (v)
            *(int64_t *)(base + s_num_flags[i].field) = v;
    }
    for (size_t i = 0; i < S_COUNT(s_bool_flags); i++)
        if (s_bool_flags[i].yaml != S_NONE)
            *(bool *)(base + s_bool_flags[i].field) |=
                *(bool *)(file + s_bool_flags[i].yaml);
    if (y->api_key) {
        s_wipe(self->api_key);
        s_set(&self->api_key, y->api_key);
        s_wipe(y->api_key);
    }
    if (y->models_count) {
        s_models_clear(self);
        for (unsigned i = 0; i < y->models_count; i++)
            s_models_add(self, y->models[i]);
    }
    s_set(&self->anthropic_version, y->anthropic.version);
}

/*  The file's pricing, checked. Returns 0 or -1 (errbuf). */
static int s_load_pricing(llmq_worker_config_t *self, const s_yaml_t *y,
                          const char *path, char *errbuf, size_t errlen)
{
    if (!y->pricing_count)
        return 0;
    self->pricing = calloc(y->pricing_count, sizeof(llmq_price_t));
    if (!self->pricing)
        return 0;
    for (unsigned i = 0; i < y->pricing_count; i++) {
        llmq_price_t *p = &self->pricing[i];
        *p = y->pricing[i];
        p->model = strdup(y->pricing[i].model);
        self->pricing_count = i + 1;
        if (p->input < 0 || p->output < 0 || p->cached_input < 0 ||
            p->reasoning < 0 || p->batch_discount < 0 ||
            p->batch_discount > 1) {
            snprintf(errbuf, errlen,
                     "%s: pricing for '%s': prices must be >= 0 and "
                     "batch_discount within 0..1",
                     path, y->pricing[i].model);
            return -1;
        }
    }
    return 0;
}

/*  The file's capabilities into the model table (reported in hello).
    Returns 0 or -1 (errbuf). */
static int s_load_caps(llmq_worker_config_t *self, const s_yaml_t *y,
                       const char *path, char *errbuf, size_t errlen)
{
    static const char *names[] = {"chat", "embeddings", "streaming", "tools",
                                  "images"};
    static const unsigned bits[] = {LLMQ_MODEL_CHAT, LLMQ_MODEL_EMBEDDINGS,
                                    LLMQ_MODEL_STREAMING, LLMQ_MODEL_TOOLS,
                                    LLMQ_MODEL_IMAGES};
    for (unsigned i = 0; i < y->capabilities_count; i++) {
        const s_y_cap_t *c = &y->capabilities[i];
        unsigned flags = 0;
        for (unsigned k = 0; k < c->features_count; k++) {
            unsigned bit = 0;
            for (size_t n = 0; n < sizeof names / sizeof names[0]; n++)
                if (strcmp(c->features[k], names[n]) == 0)
                    bit = bits[n];
            if (!bit) {
                snprintf(errbuf, errlen,
                         "%s: capabilities for '%s': unknown feature '%s' "
                         "(chat, embeddings, streaming, tools, images)",
                         path, c->model, c->features[k]);
                return -1;
            }
            flags |= bit;
        }
        if (c->context < 0 || c->max_output < 0) {
            snprintf(errbuf, errlen,
                     "%s: capabilities for '%s': context and max_output must "
                     "be >= 0",
                     path, c->model);
            return -1;
        }
        llmq_models_learn(self->known, c->model, c->context, c->max_output,
                          c->features_count > 0, flags);
    }
    return 0;
}

static int s_load_file(llmq_worker_config_t *self, const char *path,
                       char *errbuf, size_t errlen)
{
    s_yaml_t *y = NULL;
    if (llmq_yaml_load_file(path, s_MAX_CONFIG_BYTES, &s_top_schema,
                            (void **)&y, errbuf, errlen))
        return -1;
    if (!y)
        return 0; /* empty document */
    s_apply_yaml(self, y);
    int result = s_load_pricing(self, y, path, errbuf, errlen);
    if (result == 0)
        result = s_load_caps(self, y, path, errbuf, errlen);
    llmq_yaml_free(&s_top_schema, y);
    return result;
}

/*  LLMQ_* variables over the file. */
static int s_load_env(llmq_worker_config_t *self, char *errbuf, size_t errlen)
{
    const char *v;
    s_set(&self->broker, getenv("LLMQ_BROKER"));
    s_set(&self->name, getenv("LLMQ_WORKER_NAME"));
    s_set(&self->pool, getenv("LLMQ_POOL"));
    s_set(&self->provider, getenv("LLMQ_PROVIDER"));
    s_set(&self->base_url, getenv("LLMQ_BASE_URL"));
    s_set(&self->limit_group, getenv("LLMQ_LIMIT_GROUP"));
    s_set(&self->curve_cert, getenv("LLMQ_CURVE_CERT"));
    s_set(&self->broker_key, getenv("LLMQ_BROKER_KEY"));
    s_set(&self->metrics, getenv("LLMQ_WORKER_METRICS"));
    if ((v = getenv("LLMQ_MODELS")) && *v)
        s_models_csv(self, v);
    if ((v = getenv("LLMQ_CAPACITY")) &&
        s_int("LLMQ_CAPACITY", v, 1, 100000, &self->capacity, errbuf, errlen))
        return -1;
    if ((v = getenv("LLMQ_RPM")) &&
        s_int("LLMQ_RPM", v, 0, INT64_MAX / 2, &self->rpm, errbuf, errlen))
        return -1;
    if ((v = getenv("LLMQ_TPM")) &&
        s_int("LLMQ_TPM", v, 0, INT64_MAX / 2, &self->tpm, errbuf, errlen))
        return -1;
    if ((v = getenv("LLMQ_JSON_LOGS")) && *v && strcmp(v, "0") != 0)
        self->json_logs = true;
    return 0;
}

static const struct option s_options[] = {
    {"broker", required_argument, 0, F_BROKER},
    {"name", required_argument, 0, F_NAME},
    {"pool", required_argument, 0, F_POOL},
    {"provider", required_argument, 0, F_PROVIDER},
    {"base-url", required_argument, 0, F_BASE_URL},
    {"model", required_argument, 0, F_MODEL},
    {"capacity", required_argument, 0, F_CAPACITY},
    {"rpm", required_argument, 0, F_RPM},
    {"tpm", required_argument, 0, F_TPM},
    {"burst-ms", required_argument, 0, F_BURST},
    {"limit-group", required_argument, 0, F_GROUP},
    {"max-attempts", required_argument, 0, F_ATTEMPTS},
    {"timeout-ms", required_argument, 0, F_TIMEOUT},
    {"connect-timeout-ms", required_argument, 0, F_CONNECT_TIMEOUT},
    {"retry-base-ms", required_argument, 0, F_RETRY_BASE},
    {"retry-cap-ms", required_argument, 0, F_RETRY_CAP},
    {"breaker-failures", required_argument, 0, F_BRK_FAIL},
    {"breaker-cooldown-ms", required_argument, 0, F_BRK_COOL},
    {"drain-ms", required_argument, 0, F_DRAIN},
    {"heartbeat-ms", required_argument, 0, F_HB},
    {"api-key-env", required_argument, 0, F_KEY_ENV},
    {"default-max-tokens", required_argument, 0, F_MAX_TOKENS},
    {"batch-api", no_argument, 0, F_BATCH_API},
    {"curve-cert", required_argument, 0, F_CURVE_CERT},
    {"broker-key", required_argument, 0, F_BROKER_KEY},
    {"metrics", required_argument, 0, F_METRICS},
    {"config", required_argument, 0, F_CONFIG},
    {"check-only", no_argument, 0, F_CHECK},
    {"verbose", no_argument, 0, F_VERBOSE},
    {"json-logs", no_argument, 0, F_JSON},
    {"version", no_argument, 0, F_VERSION},
    {"help", no_argument, 0, F_HELP},
    {0, 0, 0, 0}};

static void s_usage_tail(FILE *out);

void llmq_worker_config_usage(FILE *out)
{
    fprintf(
        out,
        "usage: llmq-worker [flags]\n"
        "Connects to an llmq broker and serves requests with one provider.\n"
        "Precedence: defaults < OPENAI_*/ANTHROPIC_* env < --config FILE < "
        "LLMQ_* env < flags.\n"
        "\n"
        "  --broker ENDPOINT        broker backend (default "
        "tcp://127.0.0.1:5556; env LLMQ_BROKER)\n"
        "  --curve-cert PATH        CURVE: this worker's secret certificate "
        "(env LLMQ_CURVE_CERT;\n"
        "                           made by `llmq keygen NAME`)\n"
        "  --broker-key KEY         CURVE: the broker's public key, Z85 text "
        "or "
        "its public\n"
        "                           certificate file (env LLMQ_BROKER_KEY)\n"
        "  --metrics ADDR           Prometheus metrics on PORT or HOST:PORT "
        "(default off;\n"
        "                           host defaults to 127.0.0.1; env "
        "LLMQ_WORKER_METRICS)\n"
        "  --name NAME              worker name (default <pool>-<host>-<pid>; "
        "env LLMQ_WORKER_NAME)\n"
        "  --pool NAME              provider instance name (default: the "
        "provider; env LLMQ_POOL)\n"
        "  --provider KIND          openai | anthropic | echo | sim (default "
        "sim; env LLMQ_PROVIDER)\n"
        "                           sim = openai at llmq-sim (--base-url, "
        "else LLMQ_SIM_URL,\n"
        "                           else http://127.0.0.1:8089) with a "
        "dummy key\n"
        "  --base-url URL           provider base URL (env LLMQ_BASE_URL, "
        "OPENAI_BASE_URL,\n"
        "                           ANTHROPIC_BASE_URL, LLMQ_SIM_URL); "
        "anthropic and sim\n"
        "                           take it with or without /v1 (the "
        "Anthropic SDK's form\n"
        "                           is https://api.anthropic.com), "
        "openai with /v1\n"
        "  --model NAME             a model this worker serves (repeatable; "
        "env LLMQ_MODELS=a,b)\n"
        "  --capacity N             most requests in flight (default 256; env "
        "LLMQ_CAPACITY)\n"
        "  --rpm N                  requests per minute of the API key (0 = "
        "unlimited; env LLMQ_RPM)\n"
        "  --tpm N                  tokens per minute of the API key (0 = "
        "unlimited; env LLMQ_TPM)\n"
        "  --burst-ms N             limiter bucket: this many ms of the rate "
        "at once (default 1000)\n"
        "  --limit-group NAME       workers sharing one key share its rpm/tpm "
        "(env LLMQ_LIMIT_GROUP)\n"
        "  --max-attempts N         HTTP attempts per request (default 4)\n"
        "  --timeout-ms N           one attempt's timeout (default 120000)\n"
        "  --connect-timeout-ms N   connect timeout (default 10000)\n"
        "  --retry-base-ms N        backoff base, full jitter (default 500)\n"
        "  --retry-cap-ms N         backoff cap (default 8000)\n"
        "  --breaker-failures N     consecutive failures that open the circuit "
        "(default 5)\n"
        "  --breaker-cooldown-ms N  open circuit: health probe after this "
        "(default 30000)\n"
        "  --drain-ms N             on SIGTERM, finish in-flight work within "
        "this (default 30000)\n"
        "  --heartbeat-ms N         heartbeat interval (default 1000; the "
        "broker expects 1000)\n"
        "  --api-key-env VAR        read the API key from this variable "
        "(default: LLMQ_API_KEY,\n"
        "                           then OPENAI_API_KEY or ANTHROPIC_API_KEY)\n"
        "  --default-max-tokens N   max_tokens when a request sets none "
        "(anthropic; default 1024)\n"
        "  --batch-api              announce that this pool can run provider "
        "Batch API jobs\n"
        "  --config FILE            YAML config (env LLMQ_CONFIG); see "
        "examples/worker.yaml\n");
    s_usage_tail(out);
}

/*  The second half of --help. */
static void s_usage_tail(FILE *out)
{
    fprintf(
        out,
        "  --check-only             check the provider (GET /models), print "
        "the result, exit\n"
        "                           (0 ok, 3 key rejected, 4 unreachable)\n"
        "  --verbose                debug logs\n"
        "  --json-logs              JSON log lines (env LLMQ_JSON_LOGS=1)\n"
        "  --version                print the version\n"
        "  --help, -h               this text\n"
        "Durations (-ms flags): a bare number is ms; or with a unit: 500ms, "
        "2s, 1m.\n"
        "Exit codes: 0 ok, 2 bad flags or config, 3 API key rejected, 4 "
        "provider unreachable\n"
        "(--check-only), 1 other failure.\n");
}

/*  A base URL in the Anthropic SDK's form (https://api.anthropic.com, the
    SDK appends /v1/messages) or with /v1 (llmq's older form) ends in /v1:
    the provider's routes (/messages) are relative to it. llmq-sim serves
    /v1 only, so its URL (LLMQ_SIM_URL, the sim's `ready` line: no /v1)
    gets the same. OpenAI's SDK form already includes /v1 and is kept. */
static void s_url_v1(llmq_worker_config_t *self)
{
    size_t n = strlen(self->base_url);
    while (n > 0 && self->base_url[n - 1] == '/')
        self->base_url[--n] = 0;
    if (n >= 3 && strcmp(self->base_url + n - 3, "/v1") == 0)
        return;
    char *url = malloc(n + 4);
    if (!url)
        return;
    snprintf(url, n + 4, "%s/v1", self->base_url);
    free(self->base_url);
    self->base_url = url;
}

/*  The provider's default base URL and key. Returns 0 or -1 (errbuf). */
static int s_finish_provider(llmq_worker_config_t *self, char *errbuf,
                             size_t errlen)
{
    if (!self->provider)
        s_set(&self->provider, "sim");
    const char *kind = self->provider;
    bool openai = strcmp(kind, "openai") == 0;
    bool anthropic = strcmp(kind, "anthropic") == 0;
    bool sim = strcmp(kind, "sim") == 0;
    bool echo = strcmp(kind, "echo") == 0;
    if (!openai && !anthropic && !sim && !echo) {
        snprintf(
            errbuf, errlen,
            "--provider: unknown provider '%s' (openai, anthropic, echo, sim)",
            kind);
        return -1;
    }
    const char *default_url = openai      ? "https://api.openai.com/v1"
                              : anthropic ? "https://api.anthropic.com/v1"
                              : sim       ? "http://127.0.0.1:8089/v1"
                                          : NULL;
    if (!self->base_url && default_url)
        s_set(&self->base_url, default_url);
    if (self->base_url && (anthropic || sim))
        s_url_v1(self);

    /*  The key: named variable, file, LLMQ_API_KEY, SDK variable. */
    const char *key = NULL;
    if (self->api_key_env) {
        key = getenv(self->api_key_env);
        if (!key) {
            snprintf(errbuf, errlen, "api_key_env: variable %s is not set",
                     self->api_key_env);
            return -1;
        }
    }
    if (!key && self->api_key)
        key = NULL; /* keep the file's */
    else if (!key && getenv("LLMQ_API_KEY"))
        key = getenv("LLMQ_API_KEY");
    else if (!key && openai)
        key = getenv("OPENAI_API_KEY");
    else if (!key && anthropic)
        key = getenv("ANTHROPIC_API_KEY");
    if (key) {
        s_wipe(self->api_key);
        s_set(&self->api_key, key);
    }
    if (!self->api_key && sim)
        s_set(&self->api_key, "sk-llmq-sim");
    if (!self->api_key)
        s_set(&self->api_key, "");
    /*  Official endpoints need a key; local OpenAI-compatible servers may
        not. */
    if (!*self->api_key && default_url &&
        strcmp(self->base_url, default_url) == 0 && (openai || anthropic)) {
        snprintf(errbuf, errlen,
                 "no API key for %s: set %s (or LLMQ_API_KEY, or api_key_env)",
                 self->base_url,
                 openai ? "OPENAI_API_KEY" : "ANTHROPIC_API_KEY");
        return -1;
    }
    return 0;
}

/*  Name, identity, pool and models. Returns 0 or -1 (errbuf). */
static int s_finish_names(llmq_worker_config_t *self, char *errbuf,
                          size_t errlen)
{
    if (!self->pool)
        s_set(&self->pool, self->provider);
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    char buf[300];
    snprintf(buf, sizeof buf, "%s-%s-%d", self->name ? self->name : self->pool,
             host, (int)getpid());
    if (!self->name)
        s_set(&self->name, buf);
    s_set(&self->identity, buf);
    if (strlen(self->name) > 128 || strlen(self->pool) > 128) {
        snprintf(errbuf, errlen, "--name/--pool: at most 128 bytes");
        return -1;
    }
    if (self->limit_group && strlen(self->limit_group) > 128) {
        snprintf(errbuf, errlen, "--limit-group: at most 128 bytes");
        return -1;
    }
    if (self->models_count == 0) {
        /*  A model list is needed to be routed to; echo and sim answer any
            model, so they announce "*". */
        if (strcmp(self->provider, "echo") && strcmp(self->provider, "sim")) {
            snprintf(errbuf, errlen,
                     "--model: name at least one model this worker serves");
            return -1;
        }
        s_models_add(self, "*");
    }
    for (size_t i = 0; i < self->models_count; i++)
        if (strlen(self->models[i]) > 256) {
            snprintf(errbuf, errlen,
                     "--model: a model name is at most 256 bytes");
            return -1;
        }
    return 0;
}

/*  Numbers in range, URLs that look like URLs, CURVE settings. Returns 0
    or -1 (errbuf). */
static int s_finish_checks(llmq_worker_config_t *self, char *errbuf,
                           size_t errlen)
{
    if (self->capacity < 1 || self->capacity > 100000 ||
        self->max_attempts < 1 || self->timeout_ms < 1 ||
        self->connect_timeout_ms < 1 || self->retry_base_ms < 0 ||
        self->retry_cap_ms < self->retry_base_ms ||
        self->breaker_failures < 1 || self->breaker_cooldown_ms < 1 ||
        self->drain_ms < 0 || self->heartbeat_ms < 10 || self->rpm < 0 ||
        self->tpm < 0 || self->burst_ms < 1 || self->default_max_tokens < 1) {
        snprintf(errbuf, errlen,
                 "invalid numbers: capacity 1..100000, max_attempts >= 1, "
                 "timeouts >= 1, "
                 "retry cap >= base, breaker failures >= 1, rpm/tpm >= 0");
        return -1;
    }
    if (self->base_url && strncmp(self->base_url, "http://", 7) != 0 &&
        strncmp(self->base_url, "https://", 8) != 0) {
        snprintf(errbuf, errlen,
                 "--base-url: expected http://... or https://..., got '%s'",
                 self->base_url);
        return -1;
    }
    if (self->broker && !strstr(self->broker, "://")) {
        snprintf(errbuf, errlen,
                 "--broker: expected an endpoint such as tcp://host:5556, "
                 "got '%s'",
                 self->broker);
        return -1;
    }
    if (!self->broker || !*self->broker) {
        snprintf(errbuf, errlen, "--broker: an endpoint is needed");
        return -1;
    }
    return llmq_curve_wanted(self->curve_cert, self->broker_key, errbuf,
                             errlen) < 0
               ? -1
               : 0;
}

/*  The final touches once every layer is in: provider defaults, key,
    names, checks. */
static int s_finish(llmq_worker_config_t *self, char *errbuf, size_t errlen)
{
    if (s_finish_provider(self, errbuf, errlen) ||
        s_finish_names(self, errbuf, errlen))
        return -1;
    return s_finish_checks(self, errbuf, errlen);
}

/*  A number flag's value into its field. Returns 0 or -1 (errbuf). */
static int s_num_flag(llmq_worker_config_t *self, size_t i, const char *value,
                      char *errbuf, size_t errlen)
{
    char what[64] = "flag";
    for (const struct option *o = s_options; o->name; o++)
        if (o->val == s_num_flags[i].flag)
            snprintf(what, sizeof what, "--%s", o->name);
    bool duration = strlen(what) > 3 && !strcmp(what + strlen(what) - 3, "-ms");
    int64_t *num = (int64_t *)((char *)self + s_num_flags[i].field);
    return (duration ? s_ms : s_int)(what, value, s_num_flags[i].lo,
                                     s_num_flags[i].hi, num, errbuf, errlen);
}

/*  One flag of the second pass. Returns 0 or -1 (errbuf). */
static int s_flag(llmq_worker_config_t *self, int c, const char *value,
                  bool *models_from_flags, char *errbuf, size_t errlen)
{
    if (c == F_MODEL) {
        /*  Flags replace the file's list, and add up among themselves. */
        if (!*models_from_flags)
            s_models_clear(self);
        *models_from_flags = true;
        s_models_add(self, value);
    }
    for (size_t i = 0; i < S_COUNT(s_str_flags); i++)
        if (s_str_flags[i].flag == c)
            s_set((char **)((char *)self + s_str_flags[i].field), value);
    for (size_t i = 0; i < S_COUNT(s_bool_flags); i++)
        if (s_bool_flags[i].flag == c)
            *(bool *)((char *)self + s_bool_flags[i].field) = true;
    for (size_t i = 0; i < S_COUNT(s_num_flags); i++)
        if (s_num_flags[i].flag == c)
            return s_num_flag(self, i, value, errbuf, errlen);
    return 0;
}

/*  First pass: only --config, --help, --version and unknown flags.
    Returns 0, LLMQ_CONFIG_HELP or LLMQ_CONFIG_ERROR. */
static int s_first_pass(int argc, char **argv, const char **config_file,
                        char *errbuf, size_t errlen)
{
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "h", s_options, NULL)) != -1) {
        if (c == F_HELP || c == 'h') {
            llmq_worker_config_usage(stdout);
            return LLMQ_CONFIG_HELP;
        }
        if (c == F_VERSION) {
            printf("llmq-worker %s\n", LLMQ_VERSION_STRING);
            return LLMQ_CONFIG_HELP;
        }
        if (c == F_CONFIG)
            *config_file = optarg;
        if (c == '?' || c == ':') {
            snprintf(errbuf, errlen,
                     "unknown flag or missing value: '%s' (see --help)",
                     argv[optind - 1]);
            return LLMQ_CONFIG_ERROR;
        }
    }
    if (optind < argc) {
        snprintf(errbuf, errlen, "unexpected argument '%s' (see --help)",
                 argv[optind]);
        return LLMQ_CONFIG_ERROR;
    }
    return 0;
}

/*  The layers below the flags: the file, the SDK variables, LLMQ_*.
    Returns 0 or -1 (errbuf). */
static int s_load_layers(llmq_worker_config_t *self, int argc, char **argv,
                         const char *config_file, char *errbuf, size_t errlen)
{
    /*  SDK variables are defaults below the file. */
    const char *prov = NULL;
    for (int i = 1; i < argc - 1; i++)
        if (strcmp(argv[i], "--provider") == 0)
            prov = argv[i + 1];
    if (!prov)
        prov = getenv("LLMQ_PROVIDER");
    if (config_file) {
        s_set(&self->config_file, config_file);
        if (s_load_file(self, config_file, errbuf, errlen))
            return -1;
    }
    if (!prov)
        prov = self->provider;
    if (prov && strcmp(prov, "openai") == 0 && !self->base_url)
        s_set(&self->base_url, getenv("OPENAI_BASE_URL"));
    if (prov && strcmp(prov, "anthropic") == 0 && !self->base_url)
        s_set(&self->base_url, getenv("ANTHROPIC_BASE_URL"));
    if ((!prov || strcmp(prov, "sim") == 0) && !self->base_url)
        s_set(&self->base_url, getenv("LLMQ_SIM_URL"));
    return s_load_env(self, errbuf, errlen);
}

int llmq_worker_config_load(llmq_worker_config_t **config_p, int argc,
                            char **argv, char *errbuf, size_t errlen)
{
    *config_p = NULL;
    const char *config_file = getenv("LLMQ_CONFIG");
    int rc = s_first_pass(argc, argv, &config_file, errbuf, errlen);
    if (rc)
        return rc;
    llmq_worker_config_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(errbuf, errlen, "out of memory");
        return LLMQ_CONFIG_ERROR;
    }
    s_defaults(self);
    if (!(self->known = llmq_models_new())) {
        free(self);
        snprintf(errbuf, errlen, "out of memory");
        return LLMQ_CONFIG_ERROR;
    }
    rc = s_load_layers(self, argc, argv, config_file, errbuf, errlen);

    /*  Second pass: every flag, over everything. */
    optind = 1;
    bool models_from_flags = false;
    int c;
    while (!rc && (c = getopt_long(argc, argv, "h", s_options, NULL)) != -1)
        rc = s_flag(self, c, optarg, &models_from_flags, errbuf, errlen);
    if (rc || s_finish(self, errbuf, errlen)) {
        llmq_worker_config_destroy(&self);
        return LLMQ_CONFIG_ERROR;
    }
    *config_p = self;
    return 0;
}

void llmq_worker_config_destroy(llmq_worker_config_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_worker_config_t *self = *self_p;
    s_wipe(self->api_key);
    free(self->api_key);
    free(self->config_file);
    free(self->identity);
    free(self->anthropic_version);
    for (size_t i = 0; i < S_COUNT(s_str_flags); i++)
        free(*(char **)((char *)self + s_str_flags[i].field));
    s_models_clear(self);
    for (size_t i = 0; i < self->pricing_count; i++)
        free(self->pricing[i].model);
    free(self->pricing);
    llmq_models_destroy(&self->known);
    free(self);
    *self_p = NULL;
}

/*  The file's price for model: exact name, else the longest "prefix*"
    ("*" matches all); NULL if none. */
static const llmq_price_t *s_price_of(const llmq_worker_config_t *self,
                                      const char *model)
{
    const llmq_price_t *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < self->pricing_count; i++) {
        const llmq_price_t *p = &self->pricing[i];
        size_t n = strlen(p->model);
        if (strcmp(p->model, model) == 0)
            return p;
        if (n > 0 && p->model[n - 1] == '*' &&
            strncmp(p->model, model, n - 1) == 0 && (!best || n > best_len)) {
            best = p;
            best_len = n;
        }
    }
    return best;
}

double llmq_worker_config_price(const llmq_worker_config_t *self,
                                const char *model, const llmq_tokens_t *tokens,
                                bool batch)
{
    if (!model || !tokens)
        return 0;
    const llmq_price_t *p = s_price_of(self, model);
    if (!p) /* no configured price: the built-in one, if any */
        return llmq_models_cost(llmq_models_lookup(self->known, model), tokens,
                                batch);
    llmq_model_info_t info = {.input = p->input,
                              .cached_input =
                                  p->cached_input > 0 ? p->cached_input : -1,
                              .output = p->output,
                              .reasoning = p->reasoning > 0 ? p->reasoning : -1,
                              .batch_discount = p->batch_discount};
    return llmq_models_cost(&info, tokens, batch);
}

double llmq_worker_config_cost(const llmq_worker_config_t *self,
                               const char *model, int64_t prompt_tokens,
                               int64_t completion_tokens, bool batch)
{
    llmq_tokens_t tokens = {prompt_tokens, 0, completion_tokens, 0};
    return llmq_worker_config_price(self, model, &tokens, batch);
}

/*  --- selftest ------------------------------------------------------------ */

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_RET(cond)

static int s_test_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs(text, f);
    fclose(f);
    return 0;
}

/*  The selftest's state from step to step. */
typedef struct {
    bool verbose;              /* print the error read */
    char err[512];             /* the last load's error */
    llmq_worker_config_t *cfg; /* the last loaded configuration */
    char path[64];             /* the config file */
} s_test_fx_t;

/*  Every variable the config reads, unset: a known environment. */
static void s_test_clean_env(void)
{
    static const char *vars[] = {
        "LLMQ_BROKER",       "LLMQ_WORKER_NAME",   "LLMQ_POOL",
        "LLMQ_PROVIDER",     "LLMQ_BASE_URL",      "LLMQ_LIMIT_GROUP",
        "LLMQ_MODELS",       "LLMQ_CAPACITY",      "LLMQ_RPM",
        "LLMQ_TPM",          "LLMQ_JSON_LOGS",     "LLMQ_CONFIG",
        "LLMQ_API_KEY",      "OPENAI_API_KEY",     "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "LLMQ_TEST_KEY",
        "LLMQ_SIM_URL"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        unsetenv(vars[i]);
}

/*  Defaults: the sim provider. openai needs a key at the official URL;
    SDK variables are read. */
static int s_test_defaults(s_test_fx_t *fx)
{
    char *a0[] = {"llmq-worker", NULL};
    CHECK(llmq_worker_config_load(&fx->cfg, 1, a0, fx->err, sizeof fx->err) ==
          0);
    CHECK(strcmp(fx->cfg->provider, "sim") == 0);
    CHECK(strcmp(fx->cfg->base_url, "http://127.0.0.1:8089/v1") == 0);
    CHECK(strcmp(fx->cfg->broker, "tcp://127.0.0.1:5556") == 0);
    CHECK(fx->cfg->capacity == 256 && fx->cfg->models_count == 1);
    CHECK(strcmp(fx->cfg->api_key, "sk-llmq-sim") == 0);
    llmq_worker_config_destroy(&fx->cfg);
    CHECK(fx->cfg == NULL);

    char *a1[] = {"llmq-worker", "--provider", "openai",
                  "--model",     "gpt-x",      NULL};
    CHECK(llmq_worker_config_load(&fx->cfg, 5, a1, fx->err, sizeof fx->err) ==
          LLMQ_CONFIG_ERROR);
    CHECK(strstr(fx->err, "OPENAI_API_KEY"));
    setenv("OPENAI_API_KEY", "sk-from-env", 1);
    setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1", 1);
    CHECK(llmq_worker_config_load(&fx->cfg, 5, a1, fx->err, sizeof fx->err) ==
          0);
    CHECK(strcmp(fx->cfg->api_key, "sk-from-env") == 0);
    CHECK(strcmp(fx->cfg->base_url, "http://127.0.0.1:9/v1") == 0);
    llmq_worker_config_destroy(&fx->cfg);
    return 0;
}

/*  Base URLs as the SDKs take them; --provider sim follows LLMQ_SIM_URL
    and --base-url; built-in prices when the file has none. */
static int s_test_urls(s_test_fx_t *fx)
{
    setenv("ANTHROPIC_API_KEY", "sk-ant", 1);
    setenv("ANTHROPIC_BASE_URL", "https://api.anthropic.com", 1);
    char *a1[] = {"llmq-worker", "--provider", "anthropic",
                  "--model",     "claude-x",   NULL};
    CHECK(llmq_worker_config_load(&fx->cfg, 5, a1, fx->err, sizeof fx->err) ==
          0);
    CHECK(strcmp(fx->cfg->base_url, "https://api.anthropic.com/v1") == 0);
    llmq_worker_config_destroy(&fx->cfg);
    setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/v1/", 1);
    CHECK(llmq_worker_config_load(&fx->cfg, 5, a1, fx->err, sizeof fx->err) ==
          0);
    CHECK(strcmp(fx->cfg->base_url, "http://127.0.0.1:9/v1") == 0);
    llmq_worker_config_destroy(&fx->cfg);
    setenv("LLMQ_SIM_URL", "http://127.0.0.1:9999", 1);
    char *a2[] = {"llmq-worker", NULL};
    CHECK(llmq_worker_config_load(&fx->cfg, 1, a2, fx->err, sizeof fx->err) ==
          0);
    CHECK(strcmp(fx->cfg->base_url, "http://127.0.0.1:9999/v1") == 0);
    /*  No pricing in the file: gpt-4o at its built-in price. */
    double cost = llmq_worker_config_cost(fx->cfg, "gpt-4o-2024-08-06", 1000000,
                                          1000000, false);
    CHECK(cost > 12.4999 && cost < 12.5001);
    cost = llmq_worker_config_cost(fx->cfg, "claude-haiku-4-5-20251001",
                                   1000000, 1000000, true); /* Batch API */
    CHECK(cost > 2.9999 && cost < 3.0001);
    CHECK(llmq_worker_config_cost(fx->cfg, "sim-model", 1000, 1000, false) ==
          0);
    llmq_worker_config_destroy(&fx->cfg);
    char *a3[] = {"llmq-worker", "--provider",          "sim",
                  "--base-url",  "http://127.0.0.1:7/", NULL};
    CHECK(llmq_worker_config_load(&fx->cfg, 5, a3, fx->err, sizeof fx->err) ==
          0);
    CHECK(strcmp(fx->cfg->base_url, "http://127.0.0.1:7/v1") == 0);
    llmq_worker_config_destroy(&fx->cfg);
    unsetenv("LLMQ_SIM_URL");
    unsetenv("ANTHROPIC_BASE_URL");
    unsetenv("ANTHROPIC_API_KEY");
    return 0;
}

/*  The file's pricing: by model, by pattern, with the batch discount;
    cached tokens at the cached price; its capabilities in the table. */
static int s_test_pricing(const llmq_worker_config_t *cfg)
{
    CHECK(cfg->pricing_count == 2);
    llmq_tokens_t t = {1000000, 500000, 0, 0};
    double c = llmq_worker_config_price(cfg, "m1", &t, false);
    CHECK(c > 0.5999 && c < 0.6001); /* 0.5 x 1.0 + 0.5 x 0.2 */
    const llmq_model_info_t *m = llmq_models_lookup(cfg->known, "m1");
    CHECK(m && m->context == 4096 && m->max_output == 512 && m->flags_known &&
          m->flags == (LLMQ_MODEL_CHAT | LLMQ_MODEL_STREAMING));
    double cost = llmq_worker_config_cost(cfg, "m1", 1000000, 500000, false);
    CHECK(cost > 1.999 && cost < 2.001);
    cost = llmq_worker_config_cost(cfg, "m1", 1000000, 500000, true);
    CHECK(cost > 0.999 && cost < 1.001);
    cost = llmq_worker_config_cost(cfg, "m9", 100000, 0, false);
    CHECK(cost > 0.999 && cost < 1.001);
    CHECK(llmq_worker_config_cost(cfg, "other", 1000, 1000, false) == 0);
    return 0;
}

/*  File, then LLMQ_* env, then flags. */
static int s_test_layers(s_test_fx_t *fx)
{
    snprintf(fx->path, sizeof fx->path, "/tmp/llmq-worker-config-test-XXXXXX");
    int fd = mkstemp(fx->path);
    CHECK(fd >= 0);
    close(fd);
    CHECK(s_test_write(
              fx->path,
              "broker: tcp://10.0.0.1:5556\n"
              "provider: openai\n"
              "base_url: http://file/v1\n"
              "api_key_env: LLMQ_TEST_KEY\n"
              "models: [m1, m2]\n"
              "capacity: 100\n"
              "limits: {rpm: 600, tpm: 90000}\n"
              "retry:\n  max_attempts: 7\n  base_ms: 10\n  cap_ms: 100\n"
              "breaker: {failures: 2, cooldown_ms: 500}\n"
              "pricing:\n"
              "  - {model: m1, input: 1.0, output: 2.0, batch_discount: 0.5,\n"
              "     cached_input: 0.2}\n"
              "  - {model: \"m*\", input: 10, output: 10}\n"
              "capabilities:\n"
              "  - {model: m1, context: 4096, max_output: 512,\n"
              "     features: [chat, streaming]}\n") == 0);
    setenv("LLMQ_TEST_KEY", "sk-named", 1);
    setenv("LLMQ_CAPACITY", "50", 1);
    char *a2[] = {"llmq-worker", "--config", fx->path, "--rpm",
                  "60",          "--model",  "m3",     NULL};
    CHECK(llmq_worker_config_load(&fx->cfg, 7, a2, fx->err, sizeof fx->err) ==
          0);
    llmq_worker_config_t *cfg = fx->cfg;
    CHECK(strcmp(cfg->broker, "tcp://10.0.0.1:5556") == 0);
    CHECK(strcmp(cfg->base_url, "http://file/v1") ==
          0); /* file beats SDK env */
    CHECK(strcmp(cfg->api_key, "sk-named") == 0);
    CHECK(cfg->capacity == 50);                 /* env beats file */
    CHECK(cfg->rpm == 60 && cfg->tpm == 90000); /* flag beats file */
    CHECK(cfg->models_count == 1 && strcmp(cfg->models[0], "m3") == 0);
    CHECK(cfg->max_attempts == 7 && cfg->retry_base_ms == 10 &&
          cfg->retry_cap_ms == 100);
    CHECK(cfg->breaker_failures == 2 && cfg->breaker_cooldown_ms == 500);
    CHECK(s_test_pricing(cfg) == 0);
    llmq_worker_config_destroy(&fx->cfg);
    unsetenv("LLMQ_CAPACITY");
    return 0;
}

/*  Loading the config file fails with an error that starts with prefix. */
static int s_test_refused(s_test_fx_t *fx, const char *prefix)
{
    char *a3[] = {"llmq-worker", "--config", fx->path, NULL};
    CHECK(llmq_worker_config_load(&fx->cfg, 3, a3, fx->err, sizeof fx->err) ==
          LLMQ_CONFIG_ERROR);
    if (fx->verbose)
        printf("[%s] ", fx->err);
    CHECK(strncmp(fx->err, prefix, strlen(prefix)) == 0);
    return 0;
}

/*  Bad files name the line; a missing one says so. */
static int s_test_bad_files(s_test_fx_t *fx)
{
    char want[300];
    CHECK(s_test_write(fx->path,
                       "provider: openai\ncapacity: 10\nbogus_key: 1\n") == 0);
    snprintf(want, sizeof want, "%s:3:", fx->path);
    CHECK(s_test_refused(fx, want) == 0);
    CHECK(s_test_write(fx->path, "provider: openai\ncapacity: lots\n") == 0);
    snprintf(want, sizeof want, "%s:2:", fx->path);
    CHECK(s_test_refused(fx, want) == 0);
    CHECK(s_test_write(fx->path, "provider: [unclosed\n") == 0);
    CHECK(s_test_refused(fx, fx->path) == 0);
    unlink(fx->path);
    CHECK(s_test_refused(fx, "") == 0);
    CHECK(strstr(fx->err, "cannot open"));
    return 0;
}

/*  Bad flags: refused, and the message names the flag. */
static int s_test_bad_flags(s_test_fx_t *fx)
{
    struct {
        char *flag, *value, *named;
    } bad[] = {{"--capacity", "0", "--capacity"},
               {"--frobnicate", NULL, "--frobnicate"},
               {"--broker", "localhost:5556", "--broker"},
               {"--base-url", "api.openai.com", "--base-url"},
               {"--provider", "nope", "nope"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[] = {"llmq-worker", bad[i].flag, bad[i].value, NULL};
        CHECK(llmq_worker_config_load(&fx->cfg, bad[i].value ? 3 : 2, argv,
                                      fx->err,
                                      sizeof fx->err) == LLMQ_CONFIG_ERROR);
        CHECK(strstr(fx->err, bad[i].named));
    }
    CHECK(fx->cfg == NULL);
    return 0;
}

int llmq_worker_config_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_worker_config: ");
    s_test_clean_env();
    s_test_fx_t fx = {.verbose = verbose};
    CHECK(s_test_defaults(&fx) == 0);
    CHECK(s_test_urls(&fx) == 0);
    CHECK(s_test_layers(&fx) == 0);
    CHECK(s_test_bad_files(&fx) == 0);
    CHECK(s_test_bad_flags(&fx) == 0);
    s_test_clean_env();
    if (verbose)
        printf("OK\n");
    return 0;
}
