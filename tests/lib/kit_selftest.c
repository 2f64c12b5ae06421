/*  kit_selftest.c - the C test kit (proto/llmq_check.h) checks itself:
    each check variant's action, llmq_check_rmtree, and the runner's exit
    codes (with `fails`, a test that fails on purpose: exit 1).
    Usage: kit_selftest [-v] [checks|rmtree|fails|all]... */
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
    {"fails", s_test_fails},
};

LLMQ_SELFTEST_MAIN("kit_selftest", s_tests)
