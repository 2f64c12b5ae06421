/*  kit_selftest.c - the C test kit (proto/llmq_check.h) checks itself:
    each check variant's action, llmq_check_rmtree, llmq_check_spawn (of
    llmq-sim) and llmq_check_ready_value, and the runner's exit
    codes (with `fails`, a test that fails on purpose: exit 1).
    Usage: kit_selftest [-v] [checks|rmtree|spawn|fails|all]... */
#include "llmq_check.h"

#include <sys/wait.h>

static int s_ret(int value)
{
    LLMQ_CHECK_RET(value == 1);
    return 0;
}

static int s_goto(int value)
{
    int rc = 0;
    LLMQ_CHECK_OR(value == 1, rc = 7; goto done);
    rc = 1;
done:
    return rc;
}

/*  Every variant: silent and inert on a true condition, its action on a
    false one; LLMQ_CHECK aborts (seen from a child process). */
static int s_test_checks(bool verbose)
{
    (void)verbose;
    int failures = 0;
    LLMQ_CHECK_COUNT(1 + 1 == 2, failures);
    if (failures != 0)
        return -1;
    LLMQ_CHECK_COUNT(1 + 1 == 3, failures); //  prints one line, counts it
    if (failures != 1 || s_ret(1) != 0 || s_ret(2) != -1)
        return -1;
    if (s_goto(1) != 1 || s_goto(2) != 7)
        return -1;
    fflush(stderr);
    pid_t child = fork();
    if (child == 0) {
        LLMQ_CHECK(1 == 1);
        LLMQ_CHECK(1 == 2);
        _exit(0);
    }
    int status = 0;
    LLMQ_CHECK_RET(child > 0 && waitpid(child, &status, 0) == child);
    LLMQ_CHECK_RET(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    return 0;
}

static int s_write(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fputs("x\n", f);
    return fclose(f);
}

/*  A tree with files, an empty dir and a symlink out of the tree: all
    removed, the symlink's target kept; a missing path is not an error. */
static int s_test_rmtree(bool verbose)
{
    (void)verbose;
    char outside[] = "/tmp/llmq-kit-outside-XXXXXX";
    char dir[] = "/tmp/llmq-kit-tree-XXXXXX";
    LLMQ_CHECK_RET(mkdtemp(outside) && mkdtemp(dir));
    char path[256], keep[256];
    snprintf(keep, sizeof keep, "%s/keep", outside);
    LLMQ_CHECK_RET(s_write(keep) == 0);
    snprintf(path, sizeof path, "%s/a", dir);
    LLMQ_CHECK_RET(mkdir(path, 0700) == 0);
    snprintf(path, sizeof path, "%s/a/b", dir);
    LLMQ_CHECK_RET(mkdir(path, 0700) == 0);
    snprintf(path, sizeof path, "%s/a/b/file", dir);
    LLMQ_CHECK_RET(s_write(path) == 0);
    snprintf(path, sizeof path, "%s/top", dir);
    LLMQ_CHECK_RET(s_write(path) == 0);
    snprintf(path, sizeof path, "%s/a/link", dir);
    LLMQ_CHECK_RET(symlink(outside, path) == 0);
    LLMQ_CHECK_RET(llmq_check_rmtree(dir) == 0);
    struct stat st;
    LLMQ_CHECK_RET(lstat(dir, &st) != 0 && errno == ENOENT);
    LLMQ_CHECK_RET(stat(keep, &st) == 0);
    LLMQ_CHECK_RET(llmq_check_rmtree(dir) == 0);
    LLMQ_CHECK_RET(llmq_check_rmtree(outside) == 0);
    LLMQ_CHECK_RET(stat(outside, &st) != 0);
    return 0;
}

/*  llmq_check_ready_value on a made-up line; llmq_check_spawn of a missing
    binary is -1, of llmq-sim a pid and a url; llmq_check_sim_start with
    flags, and -1 when llmq-sim refuses them. */
static int s_test_spawn(bool verbose)
{
    char out[64];
    const char *line = "ready x url=http://h:1 xurl=no n=5\n";
    LLMQ_CHECK_RET(llmq_check_ready_value(line, "url", out, sizeof out) == 0);
    LLMQ_CHECK_RET(strcmp(out, "http://h:1") == 0);
    LLMQ_CHECK_RET(llmq_check_ready_value(line, "n", out, sizeof out) == 0);
    LLMQ_CHECK_RET(strcmp(out, "5") == 0);
    LLMQ_CHECK_RET(llmq_check_ready_value(line, "rl", out, sizeof out) == -1);
    char ready[256];
    LLMQ_CHECK_RET(llmq_check_spawn("no-such-binary", NULL, ready, sizeof ready,
                                    1000) == -1);
    const char *args[] = {"--port", "0", "--quiet", NULL};
    pid_t pid = llmq_check_spawn("llmq-sim", args, ready, sizeof ready, 10000);
    LLMQ_CHECK_RET(pid > 0);
    if (verbose)
        printf("%s", ready);
    LLMQ_CHECK_RET(strncmp(ready, "ready llmq-sim ", 15) == 0);
    LLMQ_CHECK_RET(llmq_check_ready_value(ready, "url", out, sizeof out) == 0);
    LLMQ_CHECK_RET(strncmp(out, "http://", 7) == 0);
    int status = 0;
    LLMQ_CHECK_RET(kill(pid, SIGTERM) == 0 && waitpid(pid, &status, 0) == pid);
    LLMQ_CHECK_RET(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    pid = llmq_check_sim_start("--latency-ms 5  --seed 7", out, sizeof out);
    LLMQ_CHECK_RET(pid > 0 && strncmp(out, "http://", 7) == 0);
    LLMQ_CHECK_RET(kill(pid, SIGTERM) == 0 && waitpid(pid, &status, 0) == pid);
    LLMQ_CHECK_RET(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    LLMQ_CHECK_RET(llmq_check_sim_start("--no-such-flag", out, sizeof out) ==
                   -1);
    return 0;
}

/*  Fails on purpose: `kit_selftest fails` must exit 1. */
static int s_test_fails(bool verbose)
{
    (void)verbose;
    LLMQ_CHECK_RET(!"this test fails on purpose");
    return 0;
}

static const llmq_selftest_t s_tests[] = {
    {"checks", s_test_checks},
    {"rmtree", s_test_rmtree},
    {"spawn", s_test_spawn},
    {"fails", s_test_fails},
};

LLMQ_SELFTEST_MAIN("kit_selftest", s_tests)
