/*  llmq_route.c - the broker's routing table (PROTOCOL.md 3.6).

    Design. The YAML file is read whole (at most 16 MiB) and loaded by
    libcyaml into structs that mirror it (s_y_*); those are checked and
    turned into the table: a hash of routes by name, each with its targets
    (model, pool, weight, and the smooth weighted round robin's current
    weight) and its chain, resolved once at load: steps[0] is the route
    itself, steps[i] the route its i-th fallback names, or a plain route
    of one target (that model, any pool) kept in the table's list. A load
    builds a whole new table and swaps it in only if it is good, so a bad
    file never leaves half a table.

    A pick walks the chain from a step on and, within a step, runs smooth
    weighted round robin over the targets that fit the request's pool and
    that the caller's callback says can answer: each adds its weight to
    its current weight, the largest current wins and gives back the sum.
    Exact and deterministic: over any run of (sum of weights) picks every
    target gets exactly its weight, spread out.
*/
#include "llmq_route.h"
#include "llmq_check.h"

#include "llmq_yaml.h"

#include <czmq.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define s_MAX_FILE (16 << 20) //  Bytes of a routes file
#define s_MAX_ROUTES 10000    //  Routes in a file
#define s_MAX_TARGETS 64      //  Targets of a route
#define s_MAX_FALLBACK 16     //  Fallbacks of a route
#define s_MAX_WEIGHT 1000000  //  Largest weight

//  --------------------------------------------------------------------------
//  The table.

typedef struct {
    char *model;     //  Target model
    char *pool;      //  Target pool, NULL = any (the request's)
    int64_t weight;  //  1..s_MAX_WEIGHT
    int64_t current; //  Smooth weighted round robin state
} s_target_t;

typedef struct _s_route_t s_route_t;
struct _s_route_t {
    char *name;          //  What clients ask for
    s_target_t *targets; //  At least one
    size_t ntargets;
    s_route_t **steps; //  The chain: steps[0] = this route (borrowed)
    size_t nsteps;
};

typedef struct {
    zhashx_t *routes; //  name -> s_route_t (owned)
    zlistx_t *plain;  //  Plain-model fallback steps, s_route_t (owned)
} s_table_t;

//  A file as stat(2) saw it: a different one has changed.
typedef struct {
    bool exists;
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
} s_stat_t;

struct _llmq_route_t {
    s_table_t *table;   //  The current table, never NULL
    zhashx_t *targeted; //  Models any table loaded so far sent requests to
                        //  (a set: requests routed before a reload may
                        //  still wait there)
    s_stat_t seen;      //  The file as last read (good or bad)
    int64_t checked_at; //  When llmq_route_changed last looked (ms)
};

static s_stat_t s_stat_of(const struct stat *st)
{
    return (s_stat_t){true, st->st_dev, st->st_ino, st->st_size,
                      (int64_t)st->st_mtim.tv_sec * 1000000000 +
                          st->st_mtim.tv_nsec};
}

static void s_route_free(void **item)
{
    s_route_t *route = (s_route_t *)*item;
    if (!route)
        return;
    for (size_t i = 0; i < route->ntargets; i++) {
        free(route->targets[i].model);
        free(route->targets[i].pool);
    }
    free(route->targets);
    free(route->steps);
    free(route->name);
    free(route);
    *item = NULL;
}

static void s_table_destroy(s_table_t **self_p)
{
    s_table_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy(&self->routes);
    zlistx_destroy(&self->plain);
    free(self);
    *self_p = NULL;
}

static s_table_t *s_table_new(void)
{
    s_table_t *self = (s_table_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->routes = zhashx_new();
    self->plain = zlistx_new();
    if (!self->routes || !self->plain) {
        s_table_destroy(&self);
        return NULL;
    }
    zhashx_set_destructor(self->routes, s_route_free);
    zlistx_set_destructor(self->plain, s_route_free);
    return self;
}

//  A route of targets n (filled by the caller), NULL if out of memory.
static s_route_t *s_route_new(const char *name, size_t ntargets, size_t nsteps)
{
    s_route_t *route = (s_route_t *)calloc(1, sizeof(*route));
    if (!route)
        return NULL;
    route->name = strdup(name);
    route->targets = (s_target_t *)calloc(ntargets, sizeof(s_target_t));
    route->ntargets = ntargets;
    route->steps = (s_route_t **)calloc(nsteps, sizeof(s_route_t *));
    route->nsteps = nsteps;
    if (!route->name || !route->targets || !route->steps) {
        void *item = route;
        s_route_free(&item);
        return NULL;
    }
    route->steps[0] = route;
    return route;
}

llmq_route_t *llmq_route_new(void)
{
    llmq_route_t *self = (llmq_route_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->table = s_table_new();
    self->targeted = zhashx_new();
    if (!self->table || !self->targeted) {
        llmq_route_destroy(&self);
        return NULL;
    }
    return self;
}

void llmq_route_destroy(llmq_route_t **self_p)
{
    llmq_route_t *self = *self_p;
    if (!self)
        return;
    s_table_destroy(&self->table);
    zhashx_destroy(&self->targeted);
    free(self);
    *self_p = NULL;
}

//  --------------------------------------------------------------------------
//  The file's shape, for libcyaml.

typedef struct {
    char *model;
    char *pool;
    int64_t *weight; //  NULL when absent (0 must be an error, not 1)
} s_y_target_t;

typedef struct {
    char *name;
    s_y_target_t *targets;
    unsigned targets_count;
    char **fallback;
    unsigned fallback_count;
} s_y_route_t;

typedef struct {
    s_y_route_t *routes;
    unsigned routes_count;
} s_y_file_t;

static const cyaml_schema_field_t s_target_fields[] = {
    CYAML_FIELD_STRING_PTR("model", CYAML_FLAG_DEFAULT, s_y_target_t, model, 1,
                           256),
    CYAML_FIELD_STRING_PTR("pool", CYAML_FLAG_OPTIONAL, s_y_target_t, pool, 1,
                           128),
    CYAML_FIELD_INT_PTR("weight", CYAML_FLAG_OPTIONAL, s_y_target_t, weight),
    CYAML_FIELD_END};

static const cyaml_schema_value_t s_target_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, s_y_target_t, s_target_fields),
};

static const cyaml_schema_value_t s_name_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 1, 256),
};

static const cyaml_schema_field_t s_route_fields[] = {
    CYAML_FIELD_STRING_PTR("name", CYAML_FLAG_DEFAULT, s_y_route_t, name, 1,
                           256),
    CYAML_FIELD_SEQUENCE("targets", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
                         s_y_route_t, targets, &s_target_entry, 0, 100000),
    CYAML_FIELD_SEQUENCE("fallback", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
                         s_y_route_t, fallback, &s_name_entry, 0, 100000),
    CYAML_FIELD_END};

static const cyaml_schema_value_t s_route_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, s_y_route_t, s_route_fields),
};

static const cyaml_schema_field_t s_file_fields[] = {
    CYAML_FIELD_SEQUENCE("routes", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
                         s_y_file_t, routes, &s_route_entry, 0, 1000000),
    CYAML_FIELD_END};

static const cyaml_schema_value_t s_file_schema = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, s_y_file_t, s_file_fields),
};

//  The line of route name's `name:` key in text, 0 if not found.
static long s_route_line(const char *text, const char *name)
{
    long line = 1;
    size_t len = strlen(name);
    for (const char *p = text; *p; p++) {
        if (*p == '\n')
            line++;
        else if (strncmp(p, "name:", 5) == 0) {
            const char *v = p + 5;
            while (*v == ' ' || *v == '"' || *v == '\'')
                v++;
            if (strncmp(v, name, len) == 0 && strchr(" \"'\n\r#,}", v[len]))
                return line;
        }
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Checking a loaded file and building the table.

typedef struct {
    const char *name; //  File name, for messages
    const char *text; //  Its text, to find a route's line
    char *err;
    size_t errlen;
} s_load_t;

//  A semantic error about route `route`: "file:line: route 'x': ...".
static int s_fail(s_load_t *ld, const char *route, const char *fmt, ...)
{
    char what[400];
    va_list args;
    va_start(args, fmt);
    vsnprintf(what, sizeof(what), fmt, args);
    va_end(args);
    long line = route ? s_route_line(ld->text, route) : 0;
    if (line > 0)
        snprintf(ld->err, ld->errlen, "%s:%ld: route '%.64s': %s", ld->name,
                 line, route, what);
    else if (route)
        snprintf(ld->err, ld->errlen, "%s: route '%.64s': %s", ld->name, route,
                 what);
    else
        snprintf(ld->err, ld->errlen, "%s: %s", ld->name, what);
    return -1;
}

//  Check one route's targets and fallbacks (numbers, repeats).
static int s_check_route(s_load_t *ld, const s_y_route_t *y)
{
    if (y->targets_count > s_MAX_TARGETS)
        return s_fail(ld, y->name, "%u targets (at most %d)", y->targets_count,
                      s_MAX_TARGETS);
    if (y->fallback_count > s_MAX_FALLBACK)
        return s_fail(ld, y->name, "%u fallbacks (at most %d)",
                      y->fallback_count, s_MAX_FALLBACK);
    for (unsigned i = 0; i < y->targets_count; i++) {
        const int64_t *w = y->targets[i].weight;
        if (w && (*w < 1 || *w > s_MAX_WEIGHT))
            return s_fail(ld, y->name,
                          "target %u (%.64s): weight %" PRId64
                          " is not in 1..%d",
                          i + 1, y->targets[i].model, *w, s_MAX_WEIGHT);
    }
    for (unsigned i = 0; i < y->fallback_count; i++) {
        if (streq(y->fallback[i], y->name))
            return s_fail(ld, y->name, "falls back to itself");
        for (unsigned j = 0; j < i; j++)
            if (streq(y->fallback[i], y->fallback[j]))
                return s_fail(ld, y->name, "fallback '%.64s' is listed twice",
                              y->fallback[i]);
    }
    return 0;
}

//  Add one route (its targets; the chain comes later) to the table.
static int s_add_route(s_load_t *ld, s_table_t *t, const s_y_route_t *y)
{
    if (s_check_route(ld, y))
        return -1;
    if (zhashx_lookup(t->routes, y->name))
        return s_fail(ld, y->name, "defined twice");
    size_t n = y->targets_count ? y->targets_count : 1;
    s_route_t *route = s_route_new(y->name, n, 1 + y->fallback_count);
    if (!route)
        return s_fail(ld, y->name, "out of memory");
    zhashx_insert(t->routes, y->name, route);
    for (size_t i = 0; i < n; i++) {
        s_target_t *to = &route->targets[i];
        const s_y_target_t *from = y->targets_count ? &y->targets[i] : NULL;
        to->model = strdup(from ? from->model : y->name);
        to->pool = from && from->pool ? strdup(from->pool) : NULL;
        to->weight = from && from->weight ? *from->weight : 1;
        if (!to->model || (from && from->pool && !to->pool))
            return s_fail(ld, y->name, "out of memory");
    }
    return 0;
}

//  Resolve every route's chain: a fallback that names a route is that
//  route; any other name becomes a plain step (that model, any pool).
static int s_resolve_chains(s_load_t *ld, s_table_t *t, const s_y_file_t *y)
{
    for (unsigned r = 0; r < y->routes_count; r++) {
        const s_y_route_t *yr = &y->routes[r];
        s_route_t *route = (s_route_t *)zhashx_lookup(t->routes, yr->name);
        for (unsigned i = 0; i < yr->fallback_count; i++) {
            const char *name = yr->fallback[i];
            s_route_t *step = (s_route_t *)zhashx_lookup(t->routes, name);
            if (!step) {
                step = s_route_new(name, 1, 1);
                if (!step || !(step->targets[0].model = strdup(name))) {
                    void *item = step;
                    s_route_free(&item);
                    return s_fail(ld, yr->name, "out of memory");
                }
                step->targets[0].weight = 1;
                zlistx_add_end(t->plain, step);
            }
            route->steps[1 + i] = step;
        }
    }
    return 0;
}

//  Build a table from a loaded file. NULL with ld->err set on failure.
static s_table_t *s_table_build(s_load_t *ld, const s_y_file_t *y)
{
    s_table_t *t = s_table_new();
    if (!t) {
        s_fail(ld, NULL, "out of memory");
        return NULL;
    }
    unsigned n = y ? y->routes_count : 0;
    if (n > s_MAX_ROUTES) {
        s_fail(ld, NULL, "%u routes (at most %d)", n, s_MAX_ROUTES);
        s_table_destroy(&t);
        return NULL;
    }
    for (unsigned i = 0; i < n; i++)
        if (s_add_route(ld, t, &y->routes[i])) {
            s_table_destroy(&t);
            return NULL;
        }
    if (y && s_resolve_chains(ld, t, y))
        s_table_destroy(&t);
    return t;
}

//  Add the current table's target models to the targeted set.
static void s_targeted_add(llmq_route_t *self)
{
    s_route_t *route = (s_route_t *)zhashx_first(self->table->routes);
    for (; route; route = (s_route_t *)zhashx_next(self->table->routes))
        for (size_t i = 0; i < route->ntargets; i++)
            zhashx_insert(self->targeted, route->targets[i].model, (void *)1);
    route = (s_route_t *)zlistx_first(self->table->plain);
    for (; route; route = (s_route_t *)zlistx_next(self->table->plain))
        zhashx_insert(self->targeted, route->targets[0].model, (void *)1);
}

int llmq_route_load_text(llmq_route_t *self, const char *name, const char *text,
                         char *err, size_t errlen)
{
    s_y_file_t *y = NULL;
    if (llmq_yaml_load(name, text, strlen(text), &s_file_schema, (void **)&y,
                       err, errlen))
        return -1;
    s_load_t ld = {name, text, err, errlen};
    s_table_t *table = s_table_build(&ld, y);
    llmq_yaml_free(&s_file_schema, y);
    if (!table)
        return -1;
    s_table_destroy(&self->table);
    self->table = table;
    s_targeted_add(self);
    return 0;
}

int llmq_route_load(llmq_route_t *self, const char *path, char *err,
                    size_t errlen)
{
    FILE *file = fopen(path, "rb");
    if (!file) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        self->seen.exists = false;
        return -1;
    }
    //  What we read, good or bad: llmq_route_changed compares with it.
    struct stat st;
    bool bad = fstat(fileno(file), &st) != 0;
    if (!bad)
        self->seen = s_stat_of(&st);
    bad = bad || st.st_size > s_MAX_FILE;
    //  One byte more than it says: a file that grew since is read whole
    //  or refused, never cut.
    size_t cap = bad ? 0 : (size_t)st.st_size + 1;
    char *text = bad ? NULL : (char *)malloc(cap + 1);
    size_t size = text ? fread(text, 1, cap, file) : 0;
    bad = !text || ferror(file) || size == cap;
    fclose(file);
    if (bad) {
        snprintf(err, errlen, "%s: cannot read it whole (at most %d bytes)",
                 path, s_MAX_FILE);
        free(text);
        return -1;
    }
    text[size] = 0;
    int rc = llmq_route_load_text(self, path, text, err, errlen);
    free(text);
    return rc;
}

bool llmq_route_changed(llmq_route_t *self, const char *path, int64_t now_ms)
{
    if (now_ms - self->checked_at < 1000)
        return false;
    self->checked_at = now_ms;
    struct stat st;
    s_stat_t now = {false, 0, 0, 0, 0};
    if (stat(path, &st) == 0)
        now = s_stat_of(&st);
    if (!now.exists || !self->seen.exists)
        return now.exists != self->seen.exists;
    return now.dev != self->seen.dev || now.ino != self->seen.ino ||
           now.size != self->seen.size || now.mtime_ns != self->seen.mtime_ns;
}

bool llmq_route_targeted(llmq_route_t *self, const char *model)
{
    return zhashx_lookup(self->targeted, model) != NULL;
}

size_t llmq_route_count(const llmq_route_t *self)
{
    return zhashx_size(self->table->routes);
}

//  --------------------------------------------------------------------------
//  Picking.

//  Does target t fit a request of pool (NULL: any)?
static bool s_fits(const s_target_t *t, const char *pool)
{
    return !t->pool || !pool || streq(t->pool, pool);
}

//  Smooth weighted round robin over step's targets that fit pool and
//  that usable (if given) accepts. NULL if none; *why gets the first
//  reason a target was refused.
static s_target_t *s_swrr(s_route_t *step, const char *pool,
                          llmq_route_usable_fn *usable, void *arg, int *why)
{
    s_target_t *best = NULL;
    int64_t total = 0;
    for (size_t i = 0; i < step->ntargets; i++) {
        s_target_t *t = &step->targets[i];
        if (!s_fits(t, pool))
            continue;
        int no = usable ? usable(t->model, t->pool ? t->pool : pool, arg) : 0;
        if (no) {
            if (!*why)
                *why = no;
            continue;
        }
        t->current += t->weight;
        total += t->weight;
        if (!best || t->current > best->current)
            best = t;
    }
    if (best)
        best->current -= total;
    return best;
}

static void s_out(llmq_route_target_t *out, const s_target_t *t,
                  const char *pool, int step)
{
    out->model = t->model;
    out->pool = t->pool ? t->pool : pool;
    out->step = step;
}

int llmq_route_pick(llmq_route_t *self, const char *name, const char *pool,
                    int from_step, llmq_route_usable_fn *usable, void *arg,
                    bool wait, llmq_route_target_t *out)
{
    if (pool && !*pool)
        pool = NULL;
    s_route_t *route = (s_route_t *)zhashx_lookup(self->table->routes, name);
    if (!route || from_step < 0 || (size_t)from_step >= route->nsteps)
        return -1;
    out->why = 0;
    bool fits = false;
    for (size_t s = (size_t)from_step; s < route->nsteps; s++) {
        s_route_t *step = route->steps[s];
        for (size_t i = 0; i < step->ntargets && !fits; i++)
            fits = s_fits(&step->targets[i], pool);
        s_target_t *t = s_swrr(step, pool, usable, arg, &out->why);
        if (t) {
            s_out(out, t, pool, (int)s);
            return 0;
        }
    }
    if (!fits)
        return -1;
    if (!wait)
        return 1;
    //  Nothing can answer: wait at the first step that fits the pool.
    int why = 0;
    for (size_t s = (size_t)from_step; s < route->nsteps; s++) {
        s_target_t *t = s_swrr(route->steps[s], pool, NULL, NULL, &why);
        if (t) {
            s_out(out, t, pool, (int)s);
            return 1;
        }
    }
    return -1;
}

//  --------------------------------------------------------------------------
//  Selftest.

#define CHECK(cond) LLMQ_CHECK_RET(cond)

static const char s_t_yaml[] =
    "# aliases, weights, a chain\n"
    "routes:\n"
    "  - name: gpt-4o\n"
    "    targets:\n"
    "      - {model: gpt-4o, pool: azure, weight: 70}\n"
    "      - {model: gpt-4o, pool: openai, weight: 30}\n"
    "    fallback: [fast, claude-haiku]\n"
    "  - name: fast\n"
    "    targets: [{model: gpt-4o-mini}]\n"
    "  - name: chain-only\n"
    "    fallback: [gpt-4o]\n";

//  The test's view of what can answer: model "pool" pairs listed as down.
typedef struct {
    const char *down[8];
} s_t_down_t;

static int s_t_usable(const char *model, const char *pool, void *arg)
{
    s_t_down_t *d = (s_t_down_t *)arg;
    char key[300];
    snprintf(key, sizeof(key), "%s %s", model, pool ? pool : "*");
    for (int i = 0; i < 8 && d->down[i]; i++)
        if (streq(d->down[i], key))
            return 7;
    return 0;
}

//  Weights: exact shares, spread out (a run of the heavier target is at
//  most 3 long for 70/30).
static int s_t_weights(llmq_route_t *rt, bool verbose)
{
    s_t_down_t up = {{NULL}};
    llmq_route_target_t t;
    int azure = 0, run = 0, longest = 0;
    for (int i = 0; i < 10000; i++) {
        CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 0, s_t_usable, &up, true,
                              &t) == 0);
        CHECK(t.step == 0 && streq(t.model, "gpt-4o"));
        bool is_azure = streq(t.pool, "azure");
        CHECK(is_azure || streq(t.pool, "openai"));
        azure += is_azure;
        run = is_azure ? run + 1 : 0;
        longest = run > longest ? run : longest;
        if (i % 10 == 9)
            CHECK(azure == (i + 1) / 10 * 7); //  Exact in every 10
    }
    if (verbose)
        printf(" weights: azure %d of 10000, longest run %d\n", azure, longest);
    CHECK(azure == 7000 && longest <= 3);
    //  A target that cannot answer gives its share to the others.
    s_t_down_t down = {{"gpt-4o azure"}};
    for (int i = 0; i < 20; i++) {
        CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 0, s_t_usable, &down, true,
                              &t) == 0);
        CHECK(t.step == 0 && streq(t.pool, "openai"));
    }
    return 0;
}

//  Chains: the first step that can answer, never back; waiting when none.
static int s_t_chain(llmq_route_t *rt)
{
    llmq_route_target_t t;
    s_t_down_t d = {{"gpt-4o azure", "gpt-4o openai"}};
    CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 0, s_t_usable, &d, true, &t) ==
          0);
    CHECK(t.step == 1 && streq(t.model, "gpt-4o-mini") && !t.pool &&
          t.why == 7);
    d.down[2] = "gpt-4o-mini *";
    CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 0, s_t_usable, &d, true, &t) ==
          0);
    CHECK(t.step == 2 && streq(t.model, "claude-haiku"));
    d.down[3] = "claude-haiku *";
    t.model = NULL;
    CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 1, s_t_usable, &d, false, &t) ==
          1);
    CHECK(t.model == NULL && t.why == 7); //  Untouched but why
    CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 0, s_t_usable, &d, true, &t) ==
          1);
    CHECK(t.step == 0 && streq(t.model, "gpt-4o")); //  Waits at the first
    s_t_down_t up = {{NULL}};
    CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 1, s_t_usable, &up, false, &t) ==
          0);
    CHECK(t.step == 1 && streq(t.model, "gpt-4o-mini")); //  Never back
    CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 3, s_t_usable, &up, true, &t) ==
          -1);
    CHECK(llmq_route_pick(rt, "gpt-4o-mini", NULL, 0, s_t_usable, &up, true,
                          &t) == -1); //  Not a route
    //  A route without targets is its own name; a fallback naming a route
    //  takes that route's targets.
    CHECK(llmq_route_pick(rt, "chain-only", NULL, 0, s_t_usable, &up, true,
                          &t) == 0);
    CHECK(t.step == 0 && streq(t.model, "chain-only") && !t.pool);
    s_t_down_t d2 = {{"chain-only *"}};
    CHECK(llmq_route_pick(rt, "chain-only", NULL, 0, s_t_usable, &d2, true,
                          &t) == 0);
    CHECK(t.step == 1 && streq(t.model, "gpt-4o") && t.pool);
    return 0;
}

//  A request that names a pool: only targets of that pool or of none.
static int s_t_pool(llmq_route_t *rt)
{
    llmq_route_target_t t;
    s_t_down_t up = {{NULL}};
    for (int i = 0; i < 5; i++) {
        CHECK(llmq_route_pick(rt, "gpt-4o", "openai", 0, s_t_usable, &up, true,
                              &t) == 0);
        CHECK(t.step == 0 && streq(t.pool, "openai"));
    }
    CHECK(llmq_route_pick(rt, "gpt-4o", "other", 0, s_t_usable, &up, true,
                          &t) == 0);
    CHECK(t.step == 1 && streq(t.model, "gpt-4o-mini") &&
          streq(t.pool, "other"));
    CHECK(llmq_route_pick(rt, "gpt-4o", "", 0, s_t_usable, &up, true, &t) == 0);
    CHECK(t.step == 0); //  "" is no pool
    CHECK(llmq_route_targeted(rt, "gpt-4o-mini") &&
          llmq_route_targeted(rt, "claude-haiku") &&
          llmq_route_targeted(rt, "chain-only") &&
          !llmq_route_targeted(rt, "fast"));
    return 0;
}

//  Bad files: a clear error naming the line, and the old table stays.
static int s_t_errors(llmq_route_t *rt, bool verbose)
{
    static const char *cases[][2] = {
        {"routes:\n  - name: a\n    targets: [{model: b, weight: 0}]\n",
         "t.yaml:2: route 'a': target 1 (b): weight 0 is not in 1..1000000"},
        {"routes:\n  - name: a\n    color: red\n",
         "t.yaml:3: Unexpected key: color"},
        {"routes:\n  - name: a\n    targets: [{pool: p}]\n", "model"},
        {"routes:\n  - name: a\n  - name: a\n", "route 'a': defined twice"},
        {"routes:\n  - name: a\n    fallback: [b, a]\n",
         "t.yaml:2: route 'a': falls back to itself"},
        {"routes:\n  - name: a\n    fallback: [b, b]\n", "listed twice"},
        {"routes: [\n", "t.yaml"},
        {"routes:\n  - name: a\n    targets: [{model: b, weight: lots}]\n",
         "t.yaml:3:"},
        {"routes:\n  - name: a\n    fallback: [b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,"
         "q,r]\n",
         "17 fallbacks (at most 16)"},
        {"routes:\n  - targets: [{model: b}]\n", "name"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err[0] = 0;
        int rc =
            llmq_route_load_text(rt, "t.yaml", cases[i][0], err, sizeof(err));
        if (verbose)
            printf(" bad file %zu: %s\n", i, err);
        CHECK(rc == -1 && strstr(err, cases[i][1]));
        CHECK(llmq_route_count(rt) == 3);
    }
    llmq_route_target_t t;
    CHECK(llmq_route_pick(rt, "fast", NULL, 0, NULL, NULL, true, &t) == 0);
    CHECK(streq(t.model, "gpt-4o-mini"));
    return 0;
}

//  Files: load, reload replaces, a missing file is an error.
static int s_t_file(llmq_route_t *rt)
{
    char path[] = "/tmp/llmq-route-test-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    FILE *f = fdopen(fd, "w");
    CHECK(f);
    fputs("routes:\n  - name: x\n    targets: [{model: y, pool: p}]\n", f);
    fclose(f);
    char err[512] = "";
    int rc = llmq_route_load(rt, path, err, sizeof(err));
    CHECK(rc == 0 && llmq_route_count(rt) == 1);
    //  Changes: looked at once a second; what was read last is the base.
    CHECK(!llmq_route_changed(rt, path, 1000000));
    CHECK((f = fopen(path, "a")) && fputs("# more\n", f) >= 0 && !fclose(f));
    CHECK(!llmq_route_changed(rt, path, 1000500));
    CHECK(llmq_route_changed(rt, path, 1001000));
    CHECK(llmq_route_load(rt, path, err, sizeof(err)) == 0);
    CHECK(!llmq_route_changed(rt, path, 1002000));
    remove(path);
    CHECK(llmq_route_changed(rt, path, 1003000));
    llmq_route_target_t t;
    CHECK(llmq_route_pick(rt, "x", NULL, 0, NULL, NULL, true, &t) == 0);
    CHECK(streq(t.model, "y") && streq(t.pool, "p"));
    CHECK(llmq_route_pick(rt, "gpt-4o", NULL, 0, NULL, NULL, true, &t) == -1);
    CHECK(llmq_route_load(rt, path, err, sizeof(err)) == -1);
    CHECK(strstr(err, "cannot open") && llmq_route_count(rt) == 1);
    CHECK(!llmq_route_changed(rt, path, 1004000)); //  Still gone
    CHECK(llmq_route_load_text(rt, "empty", "", err, sizeof(err)) == 0);
    CHECK(llmq_route_count(rt) == 0);
    CHECK(llmq_route_targeted(rt, "y")); //  Requests may still wait there
    return 0;
}

int llmq_route_test(bool verbose)
{
    llmq_route_t *rt = llmq_route_new();
    CHECK(rt && llmq_route_count(rt) == 0);
    char err[512] = "";
    int rc = llmq_route_load_text(rt, "t.yaml", s_t_yaml, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s\n", err);
    rc = rc ? rc : llmq_route_count(rt) == 3 ? 0 : -1;
    rc = rc ? rc : s_t_weights(rt, verbose);
    rc = rc ? rc : s_t_chain(rt);
    rc = rc ? rc : s_t_pool(rt);
    rc = rc ? rc : s_t_errors(rt, verbose);
    rc = rc ? rc : s_t_file(rt);
    llmq_route_destroy(&rt);
    llmq_route_destroy(&rt);
    if (verbose && !rc)
        printf("llmq_route: OK\n");
    return rc;
}
