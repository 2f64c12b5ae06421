/*  llmq_yaml.c - YAML files through libcyaml with "file:line: reason"
    errors (llmq_yaml.h). */
#include "llmq_yaml.h"

#include "llmq_check.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  libcyaml's error lines, collected for one clean message.
typedef struct {
    char text[1024];
} s_log_t;

static void s_cyaml_log(cyaml_log_t level, void *ctx, const char *fmt,
                        va_list args)
{
    if (level < CYAML_LOG_ERROR)
        return;
    s_log_t *log = (s_log_t *)ctx;
    size_t n = strlen(log->text);
    if (n < sizeof(log->text) - 1)
        vsnprintf(log->text + n, sizeof(log->text) - n, fmt, args);
}

static const cyaml_config_t s_quiet_config = {.mem_fn = cyaml_mem,
                                              .log_level = CYAML_LOG_ERROR,
                                              .flags = CYAML_CFG_DEFAULT};

//  The first line of text where key (followed by ':') starts a key, 0 if
//  none: after blanks, '-', '{' or ',' only.
static long s_key_line(const char *text, const char *key)
{
    size_t len = strcspn(key, "\n");
    long line = 1;
    bool start = true; //  Only blanks, '-' or '{' / ',' since the line began
    for (const char *p = text; *p; p++) {
        if (start && strncmp(p, key, len) == 0 && p[len] == ':')
            return line;
        if (*p == '\n')
            line++;
        start = *p == '\n' || *p == ' ' || *p == '-' || *p == '{' ||
                *p == ',' || (start && *p == '\t');
    }
    return 0;
}

//  "name:line: reason" from libcyaml's log (its backtrace names the line:
//  "line: N" from libcyaml, "line N" from libyaml).
static void s_error(const char *name, const char *text, cyaml_err_t rc,
                    const char *log, char *err, size_t errlen)
{
    long line = 0;
    const char *at = strstr(log, "line: ");
    if (at)
        line = strtol(at + 6, NULL, 10);
    else if ((at = strstr(log, "line ")))
        line = strtol(at + 5, NULL, 10);
    if (strncmp(log, "Load: ", 6) == 0)
        log += 6;
    int n = (int)strcspn(log, "\n");
    if (n == 0) {
        log = cyaml_strerror(rc);
        n = (int)strlen(log);
    }
    if (strncmp(log, "Unexpected key: ", 16) == 0) {
        long at_key = s_key_line(text, log + 16);
        line = at_key > 0 ? at_key : line;
    }
    if (line > 0)
        snprintf(err, errlen, "%s:%ld: %.*s", name, line, n, log);
    else
        snprintf(err, errlen, "%s: %.*s", name, n, log);
}

int llmq_yaml_load(const char *name, const char *text, size_t len,
                   const cyaml_schema_value_t *schema, void **data, char *err,
                   size_t errlen)
{
    s_log_t log = {{0}};
    cyaml_config_t cc = s_quiet_config;
    cc.log_fn = s_cyaml_log;
    cc.log_ctx = &log;
    *data = NULL;
    cyaml_err_t rc = cyaml_load_data((const uint8_t *)text, len, &cc, schema,
                                     (cyaml_data_t **)data, NULL);
    if (rc == CYAML_OK)
        return 0;
    s_error(name, text, rc, log.text, err, errlen);
    *data = NULL;
    return -1;
}

int llmq_yaml_load_file(const char *path, size_t max_bytes,
                        const cyaml_schema_value_t *schema, void **data,
                        char *err, size_t errlen)
{
    *data = NULL;
    FILE *file = fopen(path, "rb");
    if (!file) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    //  One byte more than allowed: a longer file is refused, never cut.
    char *text = (char *)malloc(max_bytes + 2);
    size_t size = text ? fread(text, 1, max_bytes + 1, file) : 0;
    bool bad = !text || ferror(file) || size > max_bytes;
    fclose(file);
    if (bad) {
        snprintf(err, errlen, "%s: cannot read it whole (at most %zu bytes)",
                 path, max_bytes);
        free(text);
        return -1;
    }
    text[size] = 0;
    int rc = llmq_yaml_load(path, text, size, schema, data, err, errlen);
    free(text);
    return rc;
}

void llmq_yaml_free(const cyaml_schema_value_t *schema, void *data)
{
    if (data)
        cyaml_free(&s_quiet_config, schema, data, 0);
}

/*  --- selftest ------------------------------------------------------------
 */

typedef struct {
    char *name;
    int size;
} s_test_doc_t;

static const cyaml_schema_field_t s_test_fields[] = {
    CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_POINTER, s_test_doc_t, name, 0,
                           64),
    CYAML_FIELD_INT("size", CYAML_FLAG_OPTIONAL, s_test_doc_t, size),
    CYAML_FIELD_END};

static const cyaml_schema_value_t s_test_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, s_test_doc_t, s_test_fields),
};

static int s_test_load(const char *text, void **data, char *err, size_t len)
{
    return llmq_yaml_load("t.yaml", text, strlen(text), &s_test_schema, data,
                          err, len);
}

#define CHECK(cond) LLMQ_CHECK_RET(cond)

int llmq_yaml_test(bool verbose)
{
    char err[256] = "";
    void *data = NULL;
    CHECK(s_test_load("name: a\nsize: 3\n", &data, err, sizeof err) == 0);
    s_test_doc_t *doc = (s_test_doc_t *)data;
    CHECK(doc && strcmp(doc->name, "a") == 0 && doc->size == 3);
    llmq_yaml_free(&s_test_schema, data);
    //  An unknown key is named at its own line, not its mapping's.
    CHECK(s_test_load("name: a\n\nsizes: 3\n", &data, err, sizeof err) == -1);
    CHECK(data == NULL);
    CHECK(strncmp(err, "t.yaml:3: Unexpected key: sizes", 31) == 0);
    //  A type error names its line.
    CHECK(s_test_load("name: a\nsize: big\n", &data, err, sizeof err) == -1);
    CHECK(strncmp(err, "t.yaml:2: ", 10) == 0);
    //  A missing file says so; a file over the bound is refused whole.
    CHECK(llmq_yaml_load_file("/nonexistent/llmq.yaml", 100, &s_test_schema,
                              &data, err, sizeof err) == -1);
    CHECK(strstr(err, "cannot open") != NULL);
    CHECK(llmq_yaml_load_file("/proc/self/status", 8, &s_test_schema, &data,
                              err, sizeof err) == -1);
    CHECK(strstr(err, "cannot read it whole (at most 8 bytes)") != NULL);
    if (verbose)
        printf(" * llmq_yaml: OK\n");
    return 0;
}
