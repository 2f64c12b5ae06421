/*  llmq_cluster.c - embedded local cluster: broker + workers (+ llmq-sim)
    as child processes of the CLI.

    Design. Every server binary of the suite prints one `ready <binary>
    key=value ...` line on stdout once it listens, with the real addresses
    of ports given as 0 / `*`. The cluster starts the children in
    dependency order (sim, broker, workers), reading each ready line with a
    poll() timeout, so nothing here sleeps to "give it time". A child's
    stdout pipe stays open for its lifetime (closing it would kill the
    child with SIGPIPE on its next print); its stderr goes to a log file.

    A child must never outlive the CLI: PR_SET_PDEATHSIG kills it when we
    die, even by kill -9, and destroy() stops it politely first. fork() runs
    in a process that has ZeroMQ threads, so the child only calls
    async-signal-safe functions before exec: everything (argv, paths) is
    prepared before the fork.
*/
#include "llmq_cluster.h"

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define LLMQ_CLUSTER_MAX_CHILDREN 66
#define LLMQ_CLUSTER_READY_MS 20000

/*  Set when a child exited with code 2 (it rejected its flags or config). */
static bool s_config_error = false;

typedef struct {
    pid_t pid;     /* process id, 0 when reaped */
    int out_fd;    /* read end of its stdout pipe */
    char name[32]; /* "broker", "worker-3", "sim" */
    char log[512]; /* log file path ("" when verbose) */
} s_child_t;

struct _llmq_cluster_t {
    s_child_t children[LLMQ_CLUSTER_MAX_CHILDREN]; /* started children */
    int count;                                     /* how many */
    char log_dir[256];  /* private temp directory for logs */
    char endpoint[256]; /* broker frontend */
    char backend[256];  /* broker backend */
    char *provider;     /* provider of the workers */
    char *model;        /* model the workers serve */
    bool verbose;       /* children's stderr to ours */
};

/*  Copy the value of key=... in a ready line to value (size bytes).
    Returns 0, or -1 if the line has no such key or the value is longer. */
static int s_ready_value(const char *line, const char *key, char *value,
                         size_t size)
{
    size_t keylen = strlen(key);
    const char *p = line;
    while ((p = strstr(p, key))) {
        if ((p == line || p[-1] == ' ') && p[keylen] == '=') {
            p += keylen + 1;
            size_t len = strcspn(p, " \r\n");
            if (len >= size)
                return -1;
            memcpy(value, p, len);
            value[len] = 0;
            return 0;
        }
        p += keylen;
    }
    return -1;
}

char *llmq_cluster_find_binary(const char *name)
{
    char path[8400];
    const char *bin_dir = getenv("LLMQ_BIN_DIR");
    if (bin_dir && *bin_dir) {
        snprintf(path, sizeof(path), "%s/%s", bin_dir, name);
        if (access(path, X_OK) == 0)
            return strdup(path);
    }
    char self_path[4096];
    ssize_t len = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    if (len > 0) {
        self_path[len] = 0;
        char *slash = strrchr(self_path, '/');
        if (slash) {
            *slash = 0;
            snprintf(path, sizeof(path), "%s/%s", self_path, name);
            if (access(path, X_OK) == 0)
                return strdup(path);
        }
    }
    const char *env_path = getenv("PATH");
    char *copy = strdup(env_path ? env_path : "/usr/local/bin:/usr/bin:/bin");
    char *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir;
         dir = strtok_r(NULL, ":", &save)) {
        snprintf(path, sizeof(path), "%s/%s", *dir ? dir : ".", name);
        if (access(path, X_OK) == 0) {
            free(copy);
            return strdup(path);
        }
    }
    free(copy);
    return NULL;
}

/*  Last bytes of a child's log, for error messages. */
static void s_log_tail(const s_child_t *child, char *buffer, size_t size)
{
    buffer[0] = 0;
    if (!*child->log)
        return;
    int fd = open(child->log, O_RDONLY);
    if (fd < 0)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t start = end > (off_t)size - 1 ? end - (off_t)size + 1 : 0;
    ssize_t got = pread(fd, buffer, size - 1, start);
    close(fd);
    buffer[got > 0 ? got : 0] = 0;
    //  Keep the last line or two: the reason is usually there.
    for (char *p = buffer; *p; p++)
        if (*p == '\n' && p[1])
            *p = ' ';
}

/*  Start one child; argv[0] is the binary name, resolved here. Returns the
    child or NULL with err set. */
static s_child_t *s_spawn(llmq_cluster_t *self, const char *name, char **argv,
                          char *err, size_t errlen)
{
    if (self->count >= LLMQ_CLUSTER_MAX_CHILDREN) {
        snprintf(err, errlen, "too many processes");
        return NULL;
    }
    char *path = llmq_cluster_find_binary(argv[0]);
    if (!path) {
        snprintf(err, errlen,
                 "cannot find %s (looked in $LLMQ_BIN_DIR, next to "
                 "llmq, and on PATH)",
                 argv[0]);
        return NULL;
    }
    s_child_t *child = &self->children[self->count];
    memset(child, 0, sizeof(*child));
    snprintf(child->name, sizeof(child->name), "%s", name);
    if (!self->verbose)
        snprintf(child->log, sizeof(child->log), "%s/%s.log", self->log_dir,
                 name);
    int fds[2];
    if (pipe(fds) != 0 || fcntl(fds[0], F_SETFD, FD_CLOEXEC) != 0 ||
        fcntl(fds[1], F_SETFD, FD_CLOEXEC) != 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        free(path);
        return NULL;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        free(path);
        return NULL;
    }
    if (pid == 0) {
        //  Child: async-signal-safe calls only.
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fds[1], STDOUT_FILENO);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        if (child->log[0]) {
            int log = open(child->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (log >= 0)
                dup2(log, STDERR_FILENO);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        execv(path, argv);
        _exit(127);
    }
    close(fds[1]);
    free(path);
    child->pid = pid;
    child->out_fd = fds[0];
    self->count++;
    return child;
}

/*  Wait for the child's ready line; returns it (fresh) or NULL with err. */
static char *s_wait_ready(s_child_t *child, char *err, size_t errlen)
{
    char line[1024];
    size_t used = 0;
    int64_t deadline = zclock_mono() + LLMQ_CLUSTER_READY_MS;
    while (true) {
        int64_t left = deadline - zclock_mono();
        if (left <= 0) {
            snprintf(err, errlen, "%s did not get ready within %d s",
                     child->name, LLMQ_CLUSTER_READY_MS / 1000);
            return NULL;
        }
        struct pollfd pfd = {child->out_fd, POLLIN, 0};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0 && errno == EINTR) {
            snprintf(err, errlen, "interrupted");
            return NULL;
        }
        if (rc <= 0)
            continue;
        ssize_t got = read(child->out_fd, line + used, sizeof(line) - 1 - used);
        if (got <= 0) {
            char tail[300];
            s_log_tail(child, tail, sizeof(tail));
            snprintf(err, errlen, "%s exited before it was ready%s%s",
                     child->name, *tail ? ": " : "", tail);
            //  Exit code 2 is the suite's "bad flags or config".
            int status = 0;
            if (waitpid(child->pid, &status, 0) == child->pid) {
                child->pid = 0;
                if (WIFEXITED(status) && WEXITSTATUS(status) == 2)
                    s_config_error = true;
            }
            return NULL;
        }
        used += (size_t)got;
        line[used] = 0;
        char *newline;
        //  Skip anything printed before the ready line.
        while ((newline = strchr(line, '\n'))) {
            *newline = 0;
            if (strncmp(line, "ready ", 6) == 0)
                return strdup(line);
            used -= (size_t)(newline + 1 - line);
            memmove(line, newline + 1, used + 1);
        }
        if (used >= sizeof(line) - 1)
            used = 0;
    }
}

static void s_stop_all(llmq_cluster_t *self)
{
    //  Workers first, so they leave the broker cleanly, then the rest.
    for (int i = self->count - 1; i >= 0; i--)
        if (self->children[i].pid > 0)
            kill(self->children[i].pid, SIGTERM);
    int64_t deadline = zclock_mono() + 3000;
    bool alive = true;
    while (alive) {
        alive = false;
        for (int i = 0; i < self->count; i++) {
            s_child_t *child = &self->children[i];
            if (child->pid > 0) {
                if (waitpid(child->pid, NULL, WNOHANG) == 0)
                    alive = true;
                else
                    child->pid = 0;
            }
        }
        if (alive && zclock_mono() >= deadline) {
            for (int i = 0; i < self->count; i++)
                if (self->children[i].pid > 0) {
                    kill(self->children[i].pid, SIGKILL);
                    waitpid(self->children[i].pid, NULL, 0);
                    self->children[i].pid = 0;
                }
            alive = false;
        }
        if (alive)
            zclock_sleep(10); //  reaping, not waiting for readiness
    }
}

/*  Append one YAML scalar (trimmed, unquoted) to values if not empty. */
static void s_yaml_add(zlist_t *values, const char *p, size_t len)
{
    while (len > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        len--;
    }
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
        len--;
    if (len >= 2 && (p[0] == '"' || p[0] == '\'') && p[len - 1] == p[0]) {
        p++;
        len -= 2;
    }
    if (len > 0) {
        char *value = (char *)malloc(len + 1);
        if (value) {
            memcpy(value, p, len);
            value[len] = 0;
            zlist_append(values, value); //  an autofree list copies it
            free(value);
        }
    }
}

/*  The values of a top-level key of a YAML file: `key: value`, `key: [a,
    b]` or `key:` followed by `- a` lines. The workers parse the file fully
    (libcyaml); the cluster only needs the provider, its URL and the models,
    to decide whether to start a simulator and which models to serve.
    Returns a list of fresh strings (empty if absent), NULL if no file. */
static zlist_t *s_yaml_values(const char *path, const char *key)
{
    FILE *file = path ? fopen(path, "r") : NULL;
    if (!file)
        return NULL;
    zlist_t *values = zlist_new();
    zlist_autofree(values);
    char line[1024];
    bool in_list = false;
    size_t keylen = strlen(key);
    while (fgets(line, sizeof(line), file)) {
        char *hash = strstr(line, " #");
        if (hash)
            *hash = 0;
        line[strcspn(line, "\r\n")] = 0;
        if (in_list) {
            char *p = line;
            while (*p == ' ' || *p == '\t')
                p++;
            if (*p == '-')
                s_yaml_add(values, p + 1, strlen(p + 1));
            else if (p == line && *p && *p != '#')
                break; //  the next top-level key: list ended
            continue;
        }
        if (strncmp(line, key, keylen) != 0 || line[keylen] != ':')
            continue;
        char *p = line + keylen + 1;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            in_list = true; //  a block list follows
        else if (*p == '[') {
            p++;
            p[strcspn(p, "]")] = 0;
            for (char *item = p; item;) {
                char *comma = strchr(item, ',');
                s_yaml_add(values, item,
                           comma ? (size_t)(comma - item) : strlen(item));
                item = comma ? comma + 1 : NULL;
            }
            break;
        } else {
            s_yaml_add(values, p, strlen(p));
            break;
        }
    }
    fclose(file);
    return values;
}

/*  First value of a key (fresh) or NULL. */
static char *s_yaml_value(const char *path, const char *key)
{
    zlist_t *values = s_yaml_values(path, key);
    char *value = NULL;
    if (values && zlist_size(values) > 0)
        value = strdup((char *)zlist_first(values));
    zlist_destroy(&values);
    return value;
}

//  --------------------------------------------------------------------------
//  Start a cluster

/*  1. The simulator on an ephemeral port; *base_url_p gets its OpenAI
    base URL (fresh: it ends in /v1, as OPENAI_BASE_URL does). */
static int s_start_sim(llmq_cluster_t *self, const llmq_cluster_opts_t *opts,
                       char **base_url_p, char *err, size_t errlen)
{
    char latency[32];
    snprintf(latency, sizeof(latency), "%d",
             opts->sim_latency_ms > 0 ? opts->sim_latency_ms : 50);
    char *argv[] = {"llmq-sim", "--port", "0", "--latency-ms", latency, NULL};
    s_child_t *child = s_spawn(self, "sim", argv, err, errlen);
    char *line = child ? s_wait_ready(child, err, errlen) : NULL;
    if (!line)
        return -1;
    char url[256];
    int rc = s_ready_value(line, "url", url, sizeof url);
    zstr_free(&line);
    if (rc) {
        snprintf(err, errlen, "llmq-sim printed no url");
        return -1;
    }
    *base_url_p = zsys_sprintf("%s/v1", url);
    return 0;
}

/*  2. The broker on ephemeral ports. Its own name (with our pid) tells it
    apart from any other broker that later gets the same ephemeral port,
    embedded ones included. No durable batches in a throwaway cluster (no
    file in the cwd), unless the caller names a database (beside its
    output), so that a rerun resumes its batches. */
static int s_start_broker(llmq_cluster_t *self, const llmq_cluster_opts_t *opts,
                          char *err, size_t errlen)
{
    char name[64];
    snprintf(name, sizeof name, "llmq-local-%d", (int)getpid());
    char poll[32];
    snprintf(poll, sizeof poll, "%d", opts->batch_poll_ms);
    char *argv[] = {
        "llmq-broker", "--frontend", "tcp://127.0.0.1:*", "--backend",
        "tcp://127.0.0.1:*", "--batch-db",
        opts->batch_db ? (char *)opts->batch_db : "none", "--name", name,
        //  Every worker of an earlier run died with it (PR_SET_PDEATHSIG):
        //  no upload of a job found `submitting` can still be going on, so
        //  a lookup miss may resubmit after a minute, not 30.
        "--batch-submit-grace-ms", "60s",
        opts->batch_poll_ms > 0 ? "--batch-poll-ms" : NULL, poll, NULL};
    s_child_t *child = s_spawn(self, "broker", argv, err, errlen);
    char *line = child ? s_wait_ready(child, err, errlen) : NULL;
    if (!line)
        return -1;
    int rc =
        s_ready_value(line, "frontend", self->endpoint,
                      sizeof self->endpoint) ||
        s_ready_value(line, "backend", self->backend, sizeof self->backend);
    zstr_free(&line);
    if (rc) {
        snprintf(err, errlen, "llmq-broker printed no frontend/backend");
        return -1;
    }
    return 0;
}

/*  A worker's argv (borrowed strings, argv has room for them all). Every
    worker serves the default model, the config file's models (flags
    replace the file's list, so they are repeated here) and the models the
    input names. */
static void s_worker_argv(llmq_cluster_t *self, const llmq_cluster_opts_t *opts,
                          zlist_t *file_models, size_t nfile,
                          const char *base_url, char *capacity, char **argv)
{
    size_t argc = 0;
    argv[argc++] = "llmq-worker";
    argv[argc++] = "--broker";
    argv[argc++] = self->backend;
    argv[argc++] = "--provider";
    argv[argc++] = self->provider;
    argv[argc++] = "--model";
    argv[argc++] = self->model;
    const char *extra =
        file_models ? (const char *)zlist_first(file_models) : NULL;
    for (size_t m = 0; extra && m < nfile; m++) {
        if (!streq(extra, self->model)) {
            argv[argc++] = "--model";
            argv[argc++] = (char *)extra;
        }
        extra = (const char *)zlist_next(file_models);
    }
    for (size_t m = 0; m < opts->models_count && m < 256; m++)
        if (!streq(opts->models[m], self->model)) {
            argv[argc++] = "--model";
            argv[argc++] = (char *)opts->models[m];
        }
    if (base_url) {
        argv[argc++] = "--base-url";
        argv[argc++] = (char *)base_url;
    }
    if (opts->capacity > 0) {
        argv[argc++] = "--capacity";
        argv[argc++] = capacity;
    }
    if (opts->config) {
        argv[argc++] = "--config";
        argv[argc++] = (char *)opts->config;
    }
    //  Durable batches: the provider's Batch API through these workers.
    if (opts->batch_db)
        argv[argc++] = "--batch-api";
    argv[argc] = NULL;
}

/*  3. The workers, started together, then awaited one by one. */
static int s_start_workers(llmq_cluster_t *self,
                           const llmq_cluster_opts_t *opts,
                           zlist_t *file_models, const char *base_url,
                           char *err, size_t errlen)
{
    int workers = opts->workers > 0 ? opts->workers : 4;
    if (workers > LLMQ_CLUSTER_MAX_CHILDREN - 2)
        workers = LLMQ_CLUSTER_MAX_CHILDREN - 2;
    char capacity[32];
    snprintf(capacity, sizeof(capacity), "%d", opts->capacity);
    int first = self->count;
    size_t nfile = file_models ? zlist_size(file_models) : 0;
    if (nfile > 256)
        nfile = 256;
    size_t cap =
        16 +
        2 * (nfile + (opts->models_count < 256 ? opts->models_count : 256));
    char **argv = (char **)calloc(cap, sizeof(char *));
    if (!argv) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < workers; i++) {
        s_worker_argv(self, opts, file_models, nfile, base_url, capacity, argv);
        char name[32];
        snprintf(name, sizeof(name), "worker-%d", i + 1);
        if (!s_spawn(self, name, argv, err, errlen)) {
            free(argv);
            return -1;
        }
    }
    free(argv);
    for (int i = first; i < self->count; i++) {
        char *line = s_wait_ready(&self->children[i], err, errlen);
        if (!line)
            return -1;
        zstr_free(&line);
    }
    return 0;
}

/*  The provider (flag, config file, SDK variables, else the simulator),
    its default model and URL. Fills self->provider and self->model;
    returns the base URL (borrowed from file_base_url or the environment)
    or NULL. */
static const char *s_choose_provider(llmq_cluster_t *self,
                                     const llmq_cluster_opts_t *opts,
                                     const char *file_provider,
                                     const char *file_base_url,
                                     const char *file_model)
{
    const char *openai_key = getenv("OPENAI_API_KEY");
    const char *anthropic_key = getenv("ANTHROPIC_API_KEY");
    const char *provider = opts->provider ? opts->provider : file_provider;
    if (!provider)
        provider = (openai_key && *openai_key)         ? "openai"
                   : (anthropic_key && *anthropic_key) ? "anthropic"
                                                       : "sim";
    self->provider = strdup(provider);
    const char *model = opts->model ? opts->model : file_model;
    if (!model)
        model = streq(provider, "sim")         ? "sim-model"
                : streq(provider, "anthropic") ? "claude-3-5-haiku-latest"
                : streq(provider, "echo")      ? "echo"
                                               : "gpt-4o-mini";
    self->model = strdup(model);
    const char *base_url = opts->base_url ? opts->base_url : file_base_url;
    if (!base_url && streq(provider, "openai"))
        base_url = getenv("OPENAI_BASE_URL");
    if (!base_url && streq(provider, "anthropic"))
        base_url = getenv("ANTHROPIC_BASE_URL");
    //  An empty variable is no URL (the provider's default applies).
    return base_url && *base_url ? base_url : NULL;
}

llmq_cluster_t *llmq_cluster_new(const llmq_cluster_opts_t *opts, char *err,
                                 size_t errlen)
{
    s_config_error = false;
    llmq_cluster_t *self = (llmq_cluster_t *)calloc(1, sizeof(*self));
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    self->verbose = opts->verbose;
    snprintf(self->log_dir, sizeof(self->log_dir), "%s/llmq-cluster-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(self->log_dir)) {
        snprintf(err, errlen, "cannot create a log directory: %s",
                 strerror(errno));
        free(self);
        return NULL;
    }
    char *file_provider = s_yaml_value(opts->config, "provider");
    char *file_base_url = s_yaml_value(opts->config, "base_url");
    zlist_t *file_models = s_yaml_values(opts->config, "models");
    const char *base_url = s_choose_provider(
        self, opts, file_provider, file_base_url,
        file_models ? (const char *)zlist_first(file_models) : NULL);
    char *sim_base = NULL;
    //  The simulator when it is the provider and no URL was given.
    int rc = self->provider && self->model ? 0 : -1;
    if (rc == 0 && streq(self->provider, "sim") && !base_url) {
        rc = s_start_sim(self, opts, &sim_base, err, errlen);
        base_url = sim_base;
    }
    if (rc == 0)
        rc = s_start_broker(self, opts, err, errlen);
    if (rc == 0)
        rc = s_start_workers(self, opts, file_models, base_url, err, errlen);
    free(sim_base);
    free(file_provider);
    free(file_base_url);
    zlist_destroy(&file_models);
    if (rc == 0)
        return self;
    if (s_config_error)
        errno = EINVAL;
    int saved = errno;
    llmq_cluster_destroy(&self);
    errno = saved;
    return NULL;
}

void llmq_cluster_destroy(llmq_cluster_t **self_p)
{
    if (self_p && *self_p) {
        llmq_cluster_t *self = *self_p;
        s_stop_all(self);
        for (int i = 0; i < self->count; i++) {
            close(self->children[i].out_fd);
            if (*self->children[i].log)
                unlink(self->children[i].log);
        }
        rmdir(self->log_dir);
        free(self->provider);
        free(self->model);
        free(self);
        *self_p = NULL;
    }
}

void llmq_cluster_signal(llmq_cluster_t *self)
{
    for (int i = 0; self && i < self->count; i++)
        if (self->children[i].pid > 0)
            kill(self->children[i].pid, SIGTERM);
}

const char *llmq_cluster_dead(llmq_cluster_t *self)
{
    for (int i = 0; i < self->count; i++) {
        s_child_t *child = &self->children[i];
        if (child->pid > 0 &&
            waitpid(child->pid, NULL, WNOHANG) == child->pid) {
            child->pid = 0;
            return child->name;
        }
    }
    return NULL;
}

void llmq_cluster_info(const llmq_cluster_t *self, llmq_cluster_info_t *info)
{
    info->endpoint = self->endpoint;
    info->provider = self->provider;
    info->model = self->model;
    info->log_dir = self->log_dir;
    info->simulated = streq(self->provider, "sim");
}
