/*  llmq_check.h - the C test kit: checks that stay on in release builds,
    a temp-dir remover, and the one selftest runner main.

    Every selftest (the classes' llmq_<class>_test in proto/, broker/,
    worker/, client/, gateway/) and every C test under tests/ checks with
    one macro family. A failed check prints

        file:line: check failed: <condition>

    on stderr, then does what its variant says:

        LLMQ_CHECK(cond)             abort(): ctest sees a crash at the line
        LLMQ_CHECK_RET(cond)         return -1 from the test function
        LLMQ_CHECK_COUNT(cond, n)    n++ and carry on (report all failures)
        LLMQ_CHECK_OR(cond, action)  any other statement(s): goto done, ...

    NDEBUG never turns them off (assert() would drop the side effects inside
    the condition). A file keeps its short local name with one line, e.g.
    `#define CHECK(cond) LLMQ_CHECK_RET(cond)`.

    llmq_check_rmtree(path) removes a test's temp dir (no shell).
    llmq_check_spawn(name, args, ...) starts a binary of the build
    ($LLMQ_BIN_DIR) and reads its `ready` line, e.g. llmq-sim on a free
    port; llmq_check_ready_value(line, "url", ...) reads a value of it;
    llmq_check_sim_start(flags, url, ...) is both for llmq-sim.

    A selftest runner is a table and one macro (see LLMQ_SELFTEST_MAIN):

        static const llmq_selftest_t s_tests[] = {
            {"queue", llmq_queue_test}, {"auth", llmq_auth_test}};
        LLMQ_SELFTEST_MAIN("broker_selftest", s_tests)

    Usage of every runner: prog [-v] [NAME|all]...  No name (or `all`)
    runs every test; an unknown name exits 2 (a typo in CMake never passes);
    a test that returns non-zero makes the exit code 1.

    Header only (static inline), so a class's selftest inside libllmq or a
    core library needs nothing more than this include. Not installed.
*/
#ifndef LLMQ_CHECK_H
#define LLMQ_CHECK_H

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/*  Prints the failure line; the macros add the action. */
static inline void llmq_check_failed(const char *file, int line,
                                     const char *cond)
{
    fprintf(stderr, "%s:%d: check failed: %s\n", file, line, cond);
}

#define LLMQ_CHECK_OR(cond, ...)                                               \
    do {                                                                       \
        if (!(cond)) {                                                         \
            llmq_check_failed(__FILE__, __LINE__, #cond);                      \
            __VA_ARGS__;                                                       \
        }                                                                      \
    } while (0)

#define LLMQ_CHECK(cond) LLMQ_CHECK_OR(cond, abort())
#define LLMQ_CHECK_RET(cond) LLMQ_CHECK_OR(cond, return -1)
#define LLMQ_CHECK_COUNT(cond, counter) LLMQ_CHECK_OR(cond, (counter)++)

/*  Removes path and everything under it (symlinks are removed, never
    followed). Returns 0, or -1 if something could not be removed (errno
    set). A missing path is 0. */
static inline int llmq_check_rmtree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode))
        return unlink(path);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int rc = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
            continue;
        size_t size = strlen(path) + strlen(entry->d_name) + 2;
        char *child = (char *)malloc(size);
        if (!child) {
            rc = -1;
            break;
        }
        snprintf(child, size, "%s/%s", path, entry->d_name);
        if (llmq_check_rmtree(child) != 0)
            rc = -1;
        free(child);
    }
    closedir(dir);
    return rmdir(path) == 0 ? rc : -1;
}

/*  Starts $LLMQ_BIN_DIR/<name> (./<name> without it) with args (a NULL-
    terminated list, at most 30, without argv[0]); the child gets SIGTERM
    if the test dies. Reads its first stdout line (waiting at most
    timeout_ms for each read) into ready. Returns the pid, or -1 if there
    is no such binary or no `ready ` line (the child is then reaped). */
static inline pid_t llmq_check_spawn(const char *name, const char *const *args,
                                     char *ready, size_t size, int timeout_ms)
{
    const char *dir = getenv("LLMQ_BIN_DIR");
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : ".", name);
    const char *argv[32] = {name};
    for (int k = 0; args && args[k] && k < 30; k++)
        argv[k + 1] = args[k];
    int fds[2];
    if (access(path, X_OK) != 0 || size == 0 || pipe(fds) != 0) {
        fprintf(stderr, "cannot start %s (set LLMQ_BIN_DIR)\n", path);
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    ready[0] = 0;
    while (pid > 0 && len < size - 1 && !strchr(ready, '\n')) {
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        ssize_t n = poll(&pfd, 1, timeout_ms) > 0
                        ? read(fds[0], ready + len, size - 1 - len)
                        : 0;
        if (n <= 0)
            break;
        len += (size_t)n;
        ready[len] = 0;
    }
    close(fds[0]);
    if (pid > 0 && strncmp(ready, "ready ", 6) == 0)
        return pid;
    fprintf(stderr, "%s: no ready line (got '%s')\n", name, ready);
    if (pid > 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    return -1;
}

/*  The value of key=value in a ready line, into out. Returns 0, or -1 if
    the line has no such key. */
static inline int llmq_check_ready_value(const char *line, const char *key,
                                         char *out, size_t size)
{
    size_t klen = strlen(key);
    for (const char *p = strstr(line, key); p; p = strstr(p + 1, key))
        if ((p == line || p[-1] == ' ') && p[klen] == '=') {
            snprintf(out, size, "%.*s", (int)strcspn(p + klen + 1, " \r\n"),
                     p + klen + 1);
            return 0;
        }
    return -1;
}

/*  Starts llmq-sim on a free port (--port 0 --quiet) with flags, a
    space-separated list (e.g. "--api-key K --latency-ms 5"; at most 24),
    and fills url from its ready line. Returns the pid, or -1. */
static inline pid_t llmq_check_sim_start(const char *flags, char *url,
                                         size_t size)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", flags ? flags : "");
    const char *args[30] = {"--port", "0", "--quiet"};
    int n = 3;
    char *save = NULL;
    for (char *tok = strtok_r(buf, " ", &save); tok && n < 27;
         tok = strtok_r(NULL, " ", &save))
        args[n++] = tok;
    char ready[512];
    pid_t pid = llmq_check_spawn("llmq-sim", args, ready, sizeof ready, 10000);
    if (pid > 0 && llmq_check_ready_value(ready, "url", url, size) != 0) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return pid;
}

/*  One entry of a runner's table: a name (the ctest argument) and a class
    selftest (0 = passed). */
typedef struct {
    const char *name;
    int (*test)(bool verbose);
} llmq_selftest_t;

/*  True if arg names a test of the table (or is -v / all). */
static inline bool
llmq_selftest_known(const char *arg, const llmq_selftest_t *tests, size_t count)
{
    if (strcmp(arg, "-v") == 0 || strcmp(arg, "all") == 0)
        return true;
    for (size_t t = 0; t < count; t++)
        if (strcmp(arg, tests[t].name) == 0)
            return true;
    return false;
}

/*  True if test t is selected by argv (no names, or `all`, selects all). */
static inline bool llmq_selftest_selected(const char *name, int argc,
                                          char **argv)
{
    int names = 0;
    for (int k = 1; k < argc; k++) {
        if (strcmp(argv[k], "-v") == 0)
            continue;
        names++;
        if (strcmp(argv[k], "all") == 0 || strcmp(argv[k], name) == 0)
            return true;
    }
    return names == 0;
}

/*  The runner main: checks every name first (exit 2 with the list on an
    unknown one), runs the selected tests in table order, prints a summary
    under the executable's name (prog if argv[0] is missing), returns 0 if
    all passed, else 1. */
static inline int llmq_selftest_main(const char *prog,
                                     const llmq_selftest_t *tests, size_t count,
                                     int argc, char **argv)
{
    if (argc > 0 && argv[0] && *argv[0]) {
        const char *slash = strrchr(argv[0], '/');
        prog = slash ? slash + 1 : argv[0];
    }
    bool verbose = false;
    for (int k = 1; k < argc; k++) {
        if (strcmp(argv[k], "-v") == 0)
            verbose = true;
        if (!llmq_selftest_known(argv[k], tests, count)) {
            fprintf(stderr, "%s: unknown test '%s'; tests:", prog, argv[k]);
            for (size_t t = 0; t < count; t++)
                fprintf(stderr, " %s", tests[t].name);
            fprintf(stderr, " all\n");
            return 2;
        }
    }
    int run = 0, failed = 0;
    for (size_t t = 0; t < count; t++) {
        if (!llmq_selftest_selected(tests[t].name, argc, argv))
            continue;
        run++;
        if (tests[t].test(verbose) != 0) {
            fprintf(stderr, "%s: %s FAILED\n", prog, tests[t].name);
            failed++;
        }
    }
    printf("%s: %d run, %d failed\n", prog, run, failed);
    return failed ? 1 : 0;
}

#define LLMQ_SELFTEST_MAIN(prog, table)                                        \
    int main(int argc, char **argv)                                            \
    {                                                                          \
        return llmq_selftest_main(                                             \
            prog, table, sizeof(table) / sizeof((table)[0]), argc, argv);      \
    }

#endif
