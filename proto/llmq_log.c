/*  llmq_log.c - one log line per event, text or JSON (see llmq_log.h).

    A line is built in memory (open_memstream), then written with one
    fwrite, so threads never interleave their lines. String values go
    through three steps, in this order: secrets out and the length cut
    (s_scrub), then quoting for the format (s_string, s_quoted). The cut
    comes after the scrub, so a cut can never leave half a key in a line.
*/
#include "llmq_log.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_COMPONENT_MAX 64 //  Bytes of a component name (with the NUL)
#define S_SECRET_PIECE 8   //  A secret's prefix this long is a leak
#define S_REDACTED "[redacted]"

struct _llmq_log_t {
    char component[S_COMPONENT_MAX]; //  Printed on every line
    bool json;                       //  JSON objects instead of text
    llmq_log_level_t level;          //  Lines below it are dropped
    FILE *file;                      //  Output (NULL: stderr), borrowed
    pthread_mutex_t lock;            //  Guards secrets (added any time)
    char **secrets;                  //  Registered secrets, owned
    size_t nsecrets;                 //  How many
};

//  The process-wide logger: what NULL means in every call.
static llmq_log_t s_process = {.component = "llmq",
                               .level = LLMQ_LOG_INFO,
                               .lock = PTHREAD_MUTEX_INITIALIZER};

static llmq_log_t *s_self(llmq_log_t *self)
{
    return self ? self : &s_process;
}

//  Length of the valid UTF-8 sequence at p (1 to 4), or 0 if it is not one
//  (overlong forms, surrogates and code points past U+10FFFF are not).
static size_t s_utf8_len(const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    size_t n = c >= 0xC2 && c <= 0xDF   ? 2
               : c >= 0xE0 && c <= 0xEF ? 3
               : c >= 0xF0 && c <= 0xF4 ? 4
                                        : 0;
    if (n == 0 || n > left)
        return 0;
    for (size_t k = 1; k < n; k++)
        if ((p[k] & 0xC0) != 0x80)
            return 0;
    if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0) ||
        (c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
        return 0;
    return n;
}

//  True for the C1 control characters U+0080..U+009F (CSI is U+009B).
static bool s_c1(const unsigned char *p, size_t n)
{
    return n == 2 && p[0] == 0xC2 && p[1] < 0xA0;
}

//  --------------------------------------------------------------------------
//  String values: secrets out, cut, escaped.

//  How many bytes at text (of len) match the start of secret; a match counts
//  when it is the whole secret or at least S_SECRET_PIECE bytes of it.
static size_t s_secret_at(const char *text, size_t len, const char *secret)
{
    size_t n = 0;
    while (n < len && secret[n] && text[n] == secret[n])
        n++;
    size_t need = strlen(secret);
    if (need > S_SECRET_PIECE)
        need = S_SECRET_PIECE;
    return n >= need ? n : 0;
}

char *llmq_scrub(const char *text, size_t len, const char *const *secrets,
                 size_t count, size_t *len_p)
{
    char *clean = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&clean, &size);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len;) {
        size_t hit = 0;
        for (size_t k = 0; k < count && !hit; k++)
            if (secrets[k] && *secrets[k])
                hit = s_secret_at(text + i, len - i, secrets[k]);
        if (hit)
            fputs(S_REDACTED, out);
        else
            fputc(text[i], out);
        i += hit ? hit : 1;
    }
    if (fclose(out) != 0) {
        free(clean);
        return NULL;
    }
    if (len_p)
        *len_p = size;
    return clean;
}

//  How many of text's first len bytes fit in max bytes without splitting a
//  UTF-8 sequence.
static size_t s_cut_len(const char *text, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)text[n] & 0xC0) == 0x80)
        n--; //  not inside a UTF-8 sequence
    return n;
}

size_t llmq_scrub_into(char *out, size_t size, const char *text, size_t len,
                       const char *const *secrets, size_t count)
{
    if (!out || size == 0)
        return 0;
    if (!text || len == 0) { //  the common case of no message: no allocation
        *out = 0;
        return 0;
    }
    size_t n = 0;
    char *clean = llmq_scrub(text, len, secrets, count, &n);
    //  Out of memory: nothing rather than a text that may hold a key.
    n = clean ? s_cut_len(clean, n, size - 1) : 0;
    if (n)
        memcpy(out, clean, n);
    out[n] = 0;
    free(clean);
    return n;
}

//  text without the logger's secrets, cut to LLMQ_LOG_VALUE_MAX bytes:
//  fresh, with its length in *len_p; NULL when out of memory.
static char *s_scrub(llmq_log_t *self, const char *text, size_t *len_p)
{
    size_t size = 0;
    pthread_mutex_lock(&self->lock);
    char *clean =
        llmq_scrub(text, strlen(text), (const char *const *)self->secrets,
                   self->nsecrets, &size);
    pthread_mutex_unlock(&self->lock);
    if (!clean)
        return NULL;
    if (size > LLMQ_LOG_VALUE_MAX) {
        //  room for "..." in the buffer
        size = s_cut_len(clean, size, LLMQ_LOG_VALUE_MAX - 3);
        strcpy(clean + size, "...");
        size += 3;
    }
    *len_p = size;
    return clean;
}

//  True if a text value needs quotes: empty, or any byte that is a space,
//  a control character, a quote, or not UTF-8.
static bool s_text_needs_quotes(const char *text, size_t len)
{
    if (len == 0)
        return true;
    const unsigned char *p = (const unsigned char *)text;
    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_len(p + i, len - i);
        if (n == 0 || p[i] <= ' ' || p[i] == 0x7F || p[i] == '"' ||
            s_c1(p + i, n))
            return true;
        i += n;
    }
    return false;
}

//  text in quotes with \" \\ \n \r \t escapes; other control characters as
//  \xHH in text and \u00HH in JSON; bytes that are not UTF-8 as \xHH in
//  text and U+FFFD in JSON (which must be UTF-8).
static void s_quoted(FILE *out, const char *text, size_t len, bool json)
{
    const unsigned char *p = (const unsigned char *)text;
    fputc('"', out);
    for (size_t i = 0; i < len;) {
        size_t n = s_utf8_len(p + i, len - i);
        const char *named = p[i] == '"'    ? "\\\""
                            : p[i] == '\\' ? "\\\\"
                            : p[i] == '\n' ? "\\n"
                            : p[i] == '\r' ? "\\r"
                            : p[i] == '\t' ? "\\t"
                                           : NULL;
        if (named)
            fputs(named, out);
        else if (n == 0 && json)
            fputs("\\ufffd", out);
        else if (n == 0 || p[i] < ' ' || p[i] == 0x7F)
            fprintf(out, json ? "\\u%04x" : "\\x%02x", p[i]);
        else if (s_c1(p + i, n))
            fprintf(out, "\\u%04x", p[i + 1]);
        else
            fwrite(p + i, 1, n, out);
        i += n ? n : 1;
    }
    fputc('"', out);
}

//  A string in the logger's format: JSON always quoted, text only when
//  it must be.
static void s_string(llmq_log_t *self, FILE *out, const char *text, size_t len)
{
    if (self->json || s_text_needs_quotes(text, len))
        s_quoted(out, text, len, self->json);
    else
        fwrite(text, 1, len, out);
}

//  A string value: secrets out and cut first.
static int s_string_value(llmq_log_t *self, FILE *out, const char *text)
{
    size_t len = 0;
    char *clean = s_scrub(self, text ? text : "", &len);
    if (!clean)
        return -1;
    s_string(self, out, clean, len);
    free(clean);
    return 0;
}

//  --------------------------------------------------------------------------
//  Numbers and whole lines.

//  A double as the shortest text that reads back the same; not finite: JSON
//  null, text nan / inf / -inf.
static void s_double(llmq_log_t *self, FILE *out, double d)
{
    char text[40];
    if (!isfinite(d))
        snprintf(text, sizeof text, "%s",
                 self->json ? "null"
                 : isnan(d) ? "nan"
                 : d > 0    ? "inf"
                            : "-inf");
    else {
        snprintf(text, sizeof text, "%.15g", d);
        if (strtod(text, NULL) != d)
            snprintf(text, sizeof text, "%.17g", d);
    }
    fputs(text, out);
}

static int s_field(llmq_log_t *self, FILE *out, const llmq_log_field_t *f)
{
    fputs(self->json ? "," : " ", out);
    if (self->json)
        s_quoted(out, f->key, strlen(f->key), true);
    else
        fputs(f->key, out);
    fputs(self->json ? ":" : "=", out);
    if (f->type == LLMQ_LOG_T_STR)
        return s_string_value(self, out, f->value.s);
    if (f->type == LLMQ_LOG_T_INT)
        fprintf(out, "%" PRId64, f->value.i);
    else if (f->type == LLMQ_LOG_T_DBL)
        s_double(self, out, f->value.d);
    else
        fputs(f->value.b ? "true" : "false", out);
    return 0;
}

//  Now as 2026-12-02T07:00:00.123Z (UTC, milliseconds).
static void s_stamp(char *stamp, size_t size)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(stamp, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + n, size - n, ".%03dZ", (int)(ts.tv_nsec / 1000000));
}

//  The head of a line: time, level, component, event.
static void s_head(llmq_log_t *self, FILE *out, llmq_log_level_t level,
                   const char *event)
{
    char stamp[40];
    s_stamp(stamp, sizeof stamp);
    const char *keys[] = {
        "{\"ts\":", ",\"level\":", ",\"component\":", ",\"event\":"};
    const char *values[] = {stamp, llmq_log_level_name(level), self->component,
                            event};
    for (int k = 0; k < 4; k++) {
        fputs(self->json ? keys[k] : k ? " " : "", out);
        s_string(self, out, values[k], strlen(values[k]));
    }
}

char *llmq_log_format(llmq_log_t *self, llmq_log_level_t level,
                      const char *event, const llmq_log_field_t *fields,
                      size_t count)
{
    self = s_self(self);
    char *line = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&line, &size);
    if (!out)
        return NULL;
    s_head(self, out, level, event ? event : "");
    int rc = 0;
    for (size_t k = 0; k < count && k < LLMQ_LOG_FIELDS_MAX && rc == 0; k++)
        if (fields[k].key && fields[k].type != LLMQ_LOG_T_END)
            rc = s_field(self, out, &fields[k]);
    if (self->json)
        fputc('}', out);
    if (fclose(out) != 0 || rc != 0) {
        free(line);
        return NULL;
    }
    return line;
}

//  --------------------------------------------------------------------------
//  Construction and settings.

llmq_log_t *llmq_log_new(const char *component)
{
    llmq_log_t *self = (llmq_log_t *)calloc(1, sizeof *self);
    if (!self)
        return NULL;
    pthread_mutex_init(&self->lock, NULL);
    llmq_log_setup(self, component ? component : "llmq", false, LLMQ_LOG_INFO);
    return self;
}

void llmq_log_destroy(llmq_log_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_log_t *self = *self_p;
    for (size_t k = 0; k < self->nsecrets; k++)
        free(self->secrets[k]);
    free(self->secrets);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

void llmq_log_setup(llmq_log_t *self, const char *component, bool json,
                    llmq_log_level_t level)
{
    self = s_self(self);
    if (component)
        snprintf(self->component, sizeof self->component, "%s", component);
    self->json = json;
    self->level = level;
}

void llmq_log_set_level(llmq_log_t *self, llmq_log_level_t level)
{
    s_self(self)->level = level;
}

void llmq_log_set_file(llmq_log_t *self, FILE *file)
{
    s_self(self)->file = file;
}

bool llmq_log_enabled(llmq_log_t *self, llmq_log_level_t level)
{
    self = s_self(self);
    return level >= self->level && self->level != LLMQ_LOG_OFF &&
           level != LLMQ_LOG_OFF;
}

int llmq_log_add_secret(llmq_log_t *self, const char *secret)
{
    self = s_self(self);
    if (!secret || !*secret)
        return 0;
    char *copy = strdup(secret);
    if (!copy)
        return -1;
    pthread_mutex_lock(&self->lock);
    char **secrets = (char **)realloc(self->secrets, (self->nsecrets + 1) *
                                                         sizeof *self->secrets);
    if (secrets) {
        secrets[self->nsecrets++] = copy;
        self->secrets = secrets;
    }
    pthread_mutex_unlock(&self->lock);
    if (!secrets)
        free(copy);
    return secrets ? 0 : -1;
}

//  --------------------------------------------------------------------------
//  Logging.

void llmq_log_fields(llmq_log_t *self, llmq_log_level_t level,
                     const char *event, const llmq_log_field_t *fields,
                     size_t count)
{
    if (!llmq_log_enabled(self, level))
        return;
    self = s_self(self);
    char *line = llmq_log_format(self, level, event, fields, count);
    if (!line)
        return;
    FILE *file = self->file ? self->file : stderr;
    size_t len = strlen(line);
    line[len] = '\n'; //  replaces the NUL: one write for the whole line
    fwrite(line, 1, len + 1, file);
    fflush(file);
    free(line);
}

void llmq_log_v(llmq_log_t *self, llmq_log_level_t level, const char *event,
                va_list args)
{
    if (!llmq_log_enabled(self, level))
        return;
    llmq_log_field_t fields[LLMQ_LOG_FIELDS_MAX];
    size_t count = 0;
    int type;
    while ((type = va_arg(args, int)) != LLMQ_LOG_T_END) {
        llmq_log_field_t f = {.key = va_arg(args, const char *),
                              .type = (llmq_log_type_t)type};
        if (type == LLMQ_LOG_T_STR)
            f.value.s = va_arg(args, const char *);
        else if (type == LLMQ_LOG_T_INT)
            f.value.i = va_arg(args, int64_t);
        else if (type == LLMQ_LOG_T_DBL)
            f.value.d = va_arg(args, double);
        else if (type == LLMQ_LOG_T_BOOL)
            f.value.b = va_arg(args, int) != 0;
        else
            break; //  not a field (a missing LLMQ_LOG_END): stop reading
        if (count < LLMQ_LOG_FIELDS_MAX)
            fields[count++] = f;
    }
    llmq_log_fields(self, level, event, fields, count);
}

void llmq_log(llmq_log_t *self, llmq_log_level_t level, const char *event, ...)
{
    va_list args;
    va_start(args, event);
    llmq_log_v(self, level, event, args);
    va_end(args);
}

void llmq_log_text_v(llmq_log_t *self, llmq_log_level_t level,
                     const char *event, const char *format, va_list args)
{
    if (!llmq_log_enabled(self, level))
        return;
    //  The whole text, not a cut of it: the scrub comes before any cut.
    char small[512], *text = small;
    va_list again;
    va_copy(again, args);
    int n = vsnprintf(small, sizeof small, format, args);
    if (n >= (int)sizeof small && (text = (char *)malloc((size_t)n + 1)))
        vsnprintf(text, (size_t)n + 1, format, again);
    va_end(again);
    if (n < 0 || !text)
        return;
    llmq_log_field_t f = {.key = "msg", .type = LLMQ_LOG_T_STR};
    f.value.s = text;
    llmq_log_fields(self, level, event, &f, 1);
    if (text != small)
        free(text);
}

void llmq_log_text(llmq_log_t *self, llmq_log_level_t level, const char *event,
                   const char *format, ...)
{
    va_list args;
    va_start(args, format);
    llmq_log_text_v(self, level, event, format, args);
    va_end(args);
}

static const char *s_levels[] = {"debug", "info", "warn", "error", "off"};

const char *llmq_log_level_name(llmq_log_level_t level)
{
    return level >= LLMQ_LOG_DEBUG && level <= LLMQ_LOG_OFF ? s_levels[level]
                                                            : "?";
}

int llmq_log_level_parse(const char *name, llmq_log_level_t *level_p)
{
    if (!name)
        return -1;
    for (int k = LLMQ_LOG_DEBUG; k <= LLMQ_LOG_OFF; k++)
        if (strcmp(name, s_levels[k]) == 0) {
            *level_p = (llmq_log_level_t)k;
            return 0;
        }
    if (strcmp(name, "warning") != 0)
        return -1;
    *level_p = LLMQ_LOG_WARN;
    return 0;
}

//  --------------------------------------------------------------------------
//  Selftest

//  A failed check aborts with its line (on in release builds too).
#include "llmq_check.h"
#define S_CHECK(cond) LLMQ_CHECK(cond)

//  The line for fields, without its time stamp (which changes).
static char *s_test_line(llmq_log_t *log, const char *event,
                         const llmq_log_field_t *fields, size_t count)
{
    char *line = llmq_log_format(log, LLMQ_LOG_WARN, event, fields, count);
    S_CHECK(line);
    const char *z = strchr(line, 'Z'); //  the stamp ends with Z
    S_CHECK(z && z - line == 23);
    memmove(line, z + 1, strlen(z + 1) + 1);
    return line;
}

static void s_test_text(bool verbose)
{
    llmq_log_t *log = llmq_log_new("llmq-test");
    S_CHECK(log);
    llmq_log_field_t fields[] = {
        {"worker", LLMQ_LOG_T_STR, {.s = "w1"}},
        {"name", LLMQ_LOG_T_STR, {.s = "evil\nname\x1b[2J \"q\" \\"}},
        {"empty", LLMQ_LOG_T_STR, {.s = NULL}},
        {"n", LLMQ_LOG_T_INT, {.i = -42}},
        {"cost", LLMQ_LOG_T_DBL, {.d = 0.1}},
        {"ok", LLMQ_LOG_T_BOOL, {.b = true}},
        {"key", LLMQ_LOG_T_STR, {.s = "a=b+c/Z85:"}},
        {"utf8", LLMQ_LOG_T_STR, {.s = "caf\xc3\xa9"}},
        {"bad", LLMQ_LOG_T_STR, {.s = "x\xff\xc2\x9b"}},
    };
    char *line = s_test_line(log, "worker_join", fields, 9);
    if (verbose)
        printf("%s\n", line);
    S_CHECK(strcmp(line, " warn llmq-test worker_join worker=w1"
                         " name=\"evil\\nname\\x1b[2J \\\"q\\\" \\\\\""
                         " empty=\"\" n=-42 cost=0.1 ok=true key=a=b+c/Z85:"
                         " utf8=caf\xc3\xa9 bad=\"x\\xff\\u009b\"") == 0);
    free(line);
    llmq_log_destroy(&log);
    llmq_log_destroy(&log);
    S_CHECK(log == NULL);
}

static void s_test_json(bool verbose)
{
    llmq_log_t *log = llmq_log_new("llmq-test");
    llmq_log_setup(log, NULL, true, LLMQ_LOG_DEBUG);
    llmq_log_field_t fields[] = {
        {"s", LLMQ_LOG_T_STR, {.s = "a\"b\\c\nd\x1b\x7f\xff"}},
        {"i", LLMQ_LOG_T_INT, {.i = INT64_MIN}},
        {"d", LLMQ_LOG_T_DBL, {.d = 2.5e-7}},
        {"nan", LLMQ_LOG_T_DBL, {.d = NAN}},
        {"b", LLMQ_LOG_T_BOOL, {.b = false}},
    };
    char *line = llmq_log_format(log, LLMQ_LOG_INFO, "ev\"t", fields, 5);
    S_CHECK(line);
    if (verbose)
        printf("%s\n", line);
    S_CHECK(strncmp(line, "{\"ts\":\"", 7) == 0);
    const char *rest = strstr(line, "Z\",");
    S_CHECK(rest && rest - line == 30);
    S_CHECK(strcmp(rest + 3,
                   "\"level\":\"info\",\"component\":\"llmq-test\","
                   "\"event\":\"ev\\\"t\",\"s\":\"a\\\"b\\\\c\\nd\\u001b"
                   "\\u007f\\ufffd\",\"i\":-9223372036854775808,"
                   "\"d\":2.5e-07,\"nan\":null,\"b\":false}") == 0);
    free(line);
    llmq_log_destroy(&log);
}

//  Levels: below the threshold nothing is written; off is silent.
static void s_test_levels(void)
{
    char *text = NULL;
    size_t size = 0;
    FILE *file = open_memstream(&text, &size);
    S_CHECK(file);
    llmq_log_t *log = llmq_log_new("t");
    llmq_log_set_file(log, file);
    llmq_log(log, LLMQ_LOG_DEBUG, "hidden", LLMQ_LOG_END);
    S_CHECK(!llmq_log_enabled(log, LLMQ_LOG_DEBUG));
    llmq_log(log, LLMQ_LOG_INFO, "shown", LLMQ_LOG_INT("n", 7u),
             LLMQ_LOG_DBL("x", 1), LLMQ_LOG_BOOL("b", 2),
             LLMQ_LOG_STR("s", "v"), LLMQ_LOG_END);
    llmq_log_text(log, LLMQ_LOG_ERROR, "note", "%d apples", 3);
    llmq_log_set_level(log, LLMQ_LOG_OFF);
    llmq_log(log, LLMQ_LOG_ERROR, "silenced", LLMQ_LOG_END);
    S_CHECK(!llmq_log_enabled(log, LLMQ_LOG_ERROR));
    fflush(file);
    S_CHECK(!strstr(text, "hidden") && !strstr(text, "silenced"));
    S_CHECK(strstr(text, " info t shown n=7 x=1 b=true s=v\n"));
    S_CHECK(strstr(text, " error t note msg=\"3 apples\"\n"));
    fclose(file);
    free(text);
    llmq_log_level_t level = LLMQ_LOG_OFF;
    S_CHECK(llmq_log_level_parse("warning", &level) == 0 &&
            level == LLMQ_LOG_WARN);
    S_CHECK(llmq_log_level_parse("loud", &level) == -1 &&
            level == LLMQ_LOG_WARN);
    S_CHECK(strcmp(llmq_log_level_name(LLMQ_LOG_DEBUG), "debug") == 0);
    llmq_log_destroy(&log);
}

//  Secrets: whole, and a piece of 8+ from its start, even where a long
//  value is cut; short pieces and other text stay.
static void s_test_secrets(bool verbose)
{
    const char *key = "sk-test-SECRET1234567890";
    llmq_log_t *log = llmq_log_new("t");
    S_CHECK(llmq_log_add_secret(log, key) == 0);
    S_CHECK(llmq_log_add_secret(log, "") == 0);
    S_CHECK(llmq_log_add_secret(log, NULL) == 0);
    llmq_log_field_t f = {"m", LLMQ_LOG_T_STR, {.s = NULL}};
    f.value.s = "bad key sk-test-SECRET1234567890! cut: AAAAsk-test-SECR";
    char *line = s_test_line(log, "e", &f, 1);
    if (verbose)
        printf("%s\n", line);
    S_CHECK(strcmp(line, " warn t e m=\"bad key [redacted]! cut: "
                         "AAAA[redacted]\"") == 0);
    free(line);
    f.value.s = "sk-test- is 8, sk-test is 7";
    line = s_test_line(log, "e", &f, 1);
    S_CHECK(strcmp(line, " warn t e m=\"[redacted] is 8, sk-test is 7\"") == 0);
    free(line);
    //  A long value with the key where the cut falls: no piece survives.
    char *text = (char *)malloc(LLMQ_LOG_VALUE_MAX + 64);
    S_CHECK(text);
    for (size_t off = LLMQ_LOG_VALUE_MAX - 20; off < LLMQ_LOG_VALUE_MAX + 4;
         off++) {
        memset(text, 'A', off);
        strcpy(text + off, key);
        f.value.s = text;
        line = s_test_line(log, "e", &f, 1);
        S_CHECK(!strstr(line, "sk-test-"));
        S_CHECK(strlen(line) < LLMQ_LOG_VALUE_MAX + 32);
        free(line);
    }
    free(text);
    llmq_log_destroy(&log);
}

//  The scrubber alone: the key at every offset around a cut never leaves
//  a piece of 8 or more characters in the cut text; free text lines are
//  scrubbed whole before their cut.
static void s_test_scrub_cut(void)
{
    const char *key = "sk-test-SECRET1234567890";
    const char *keys[] = {NULL, "", key};
    char text[200], out[64];
    for (size_t off = 0; off < 64; off++) {
        memset(text, 'A', off);
        snprintf(text + off, sizeof text - off, "%s tail", key);
        size_t n =
            llmq_scrub_into(out, sizeof out, text, strlen(text), keys, 3);
        S_CHECK(n == strlen(out) && n < sizeof out);
        for (size_t k = 0; k + 8 <= n; k++)
            S_CHECK(strncmp(out + k, key, 8) != 0);
    }
    //  In place, and a short buffer.
    snprintf(text, sizeof text, "x %s y", key);
    llmq_scrub_into(text, sizeof text, text, strlen(text), keys, 3);
    S_CHECK(strcmp(text, "x [redacted] y") == 0);
    llmq_scrub_into(out, 5,
                    "a\xc3\xa9"
                    "bcdef",
                    8, keys, 0);
    S_CHECK(strcmp(out, "a\xc3\xa9"
                        "b") == 0);
    llmq_scrub_into(out, 3,
                    "a\xc3\xa9"
                    "bcdef",
                    8, keys, 0);
    S_CHECK(strcmp(out, "a") == 0); //  not inside the UTF-8 sequence
    size_t len = 0;
    char *fresh = llmq_scrub("ab", 2, NULL, 0, &len);
    S_CHECK(fresh && len == 2 && strcmp(fresh, "ab") == 0);
    free(fresh);
    //  A free text line longer than a value: the key where it is cut.
    char *file_text = NULL;
    size_t file_size = 0;
    FILE *file = open_memstream(&file_text, &file_size);
    S_CHECK(file);
    llmq_log_t *log = llmq_log_new("t");
    S_CHECK(llmq_log_add_secret(log, key) == 0);
    llmq_log_set_file(log, file);
    for (int off = LLMQ_LOG_VALUE_MAX - 24; off < LLMQ_LOG_VALUE_MAX + 8; off++)
        llmq_log_text(log, LLMQ_LOG_WARN, "e", "%*s%s", off, "", key);
    fflush(file);
    S_CHECK(file_text && !strstr(file_text, "sk-test-"));
    llmq_log_destroy(&log);
    fclose(file);
    free(file_text);
}

int llmq_log_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_log: ");
    s_test_text(verbose);
    s_test_json(verbose);
    s_test_levels();
    s_test_secrets(verbose);
    s_test_scrub_cut();
    //  The process-wide logger: NULL in every call.
    llmq_log_set_level(NULL, LLMQ_LOG_WARN);
    S_CHECK(!llmq_log_enabled(NULL, LLMQ_LOG_INFO));
    S_CHECK(llmq_log_enabled(NULL, LLMQ_LOG_WARN));
    llmq_log_set_level(NULL, LLMQ_LOG_INFO);
    if (verbose)
        printf("OK\n");
    return 0;
}
