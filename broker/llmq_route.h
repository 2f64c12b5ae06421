/*  llmq_route.h - the broker's routing table: aliases, weights, fallback
    chains (PROTOCOL.md 3.6), read from a YAML file.

    The table knows names and numbers only: which (model, pool) targets a
    requested name stands for, their weights, and the chain of steps to
    try. Whether a target can answer now is the broker's knowledge: it
    passes a callback (llmq_route_usable_fn) to every pick.

    Usage (what the broker does):

        llmq_route_t *routes = llmq_route_new ();
        char err [512];
        if (llmq_route_load (routes, "routes.yaml", err, sizeof err))
            ... err is "routes.yaml:7: reason"; the old table stays
        llmq_route_target_t t;
        if (llmq_route_pick (routes, "gpt-4o", NULL, 0, usable, arg, true,
                             &t) >= 0)
            ... queue it for (t.model, t.pool), remember t.step
        //  Later, its target cannot answer: the next step that can.
        if (llmq_route_pick (routes, "gpt-4o", NULL, step + 1, usable, arg,
                             false, &t) == 0)
            ... move it to (t.model, t.pool)
        llmq_route_destroy (&routes);

    Picks among several targets are smooth weighted round robin (nginx's):
    deterministic and exact, so 70/30 gives 7 and 3 of every 10.

    Ownership: strings in a llmq_route_target_t are borrowed from the
    table (t.pool may be the caller's pool) and valid until the next
    successful load or destroy.
*/
#ifndef LLMQ_ROUTE_H_INCLUDED
#define LLMQ_ROUTE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _llmq_route_t llmq_route_t;

/*  Can target (model, pool; pool NULL = any) answer now? 0 = yes, else a
    reason code of the caller's (> 0), passed back in why. */
typedef int(llmq_route_usable_fn)(const char *model, const char *pool,
                                  void *arg);

/*  Where a pick sends a request. */
typedef struct {
    const char *model; //  Target model (borrowed)
    const char *pool;  //  Target pool, NULL = any (borrowed)
    int step;          //  Chain step: 0 the route itself, 1 its first
                       //  fallback, ...
    int why;           //  First reason a skipped target gave, 0 if none
} llmq_route_target_t;

/*  An empty table (no routes). NULL if out of memory. */
llmq_route_t *llmq_route_new(void);

/*  Destroy the table; NULLs *self_p. Idempotent. */
void llmq_route_destroy(llmq_route_t **self_p);

/*  Read the table from a YAML file and, if it is good, replace the current
    one (weights start afresh). Returns 0, or -1 with "file:line: reason"
    in err (the current table stays). */
int llmq_route_load(llmq_route_t *self, const char *path, char *err,
                    size_t errlen);

/*  As llmq_route_load, from YAML text (name is used in errors). */
int llmq_route_load_text(llmq_route_t *self, const char *name, const char *text,
                         char *err, size_t errlen);

/*  Has the file at path changed (another file, size or mtime, or it
    appeared or went) since the last load read it? Looks at most once a
    second (now_ms: a monotonic clock); false in between. */
bool llmq_route_changed(llmq_route_t *self, const char *path, int64_t now_ms);

/*  Could a routed request wait in a queue of model: is it a target (or a
    fallback model) of a table loaded so far? */
bool llmq_route_targeted(llmq_route_t *self, const char *model);

/*  Routes in the table. */
size_t llmq_route_count(const llmq_route_t *self);

/*  Pick a target for a request for name (pool: the request's, NULL if
    none), from chain step from_step on: the first step with a target that
    can answer (usable returns 0). Returns 0 with *out filled; 1 if no step
    can answer (with wait true, *out is then from_step's pick, ignoring
    usability; with wait false *out is untouched but why); -1 if name is
    not a route, from_step is past its chain, or no target fits pool. */
int llmq_route_pick(llmq_route_t *self, const char *name, const char *pool,
                    int from_step, llmq_route_usable_fn *usable, void *arg,
                    bool wait, llmq_route_target_t *out);

/*  Self test; returns 0 on success. */
int llmq_route_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
