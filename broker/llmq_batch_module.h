/*  llmq_batch_module.h - the batch manager as a broker plug-in (issue 8).

    Fills an llmq_broker_module_t (broker/llmq_broker.h) with callbacks
    that drive llmq_batch: client batch.* messages, worker job.* messages,
    the tick, and the pull hooks of realtime dispatch (next_item,
    item_result, item_returned). With it, turning batches on in the broker
    is one line in main.c:

        llmq_batch_module_arg_t barg;
        llmq_batch_module_arg_defaults(&barg, "/var/lib/llmq/batches.db");
        llmq_broker_module_t bmod;
        llmq_batch_module_init(&bmod, &barg);
        config.module = &bmod;

    Provider mode also needs two things only the broker knows: which pool
    has a live worker with batch_api for a model, and how to send a job.*
    task to one of that pool's workers. Until the broker exports them, leave
    both NULL: every batch then runs in realtime (auto never picks
    provider; an explicit provider batch waits `queued`).

    Ownership: arg (and module) must outlive the broker actor.
*/
#ifndef LLMQ_BATCH_MODULE_H_INCLUDED
#define LLMQ_BATCH_MODULE_H_INCLUDED

#include "llmq_batch.h"
#include "llmq_broker.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *path;           /* SQLite file of the batch store */
    llmq_batch_config_t config; /* tunables */
    /*  Provider mode (both, or neither): a live batch_api worker's pool
        for model (pool "" = any), with its provider kind... */
    bool (*pool_lookup)(llmq_broker_core_t *core, const char *model,
                        const char *pool, char *pool_out, size_t pool_size,
                        char *provider_out, size_t provider_size);
    /*  ...and send msg to one of that pool's live workers: 0, or -1 if
        there is none (msg then untouched). Takes the message on 0. */
    int (*send_worker)(llmq_broker_core_t *core, const char *pool,
                       llmq_msg_t **msg_p);
} llmq_batch_module_arg_t;

/*  Defaults: the given path, llmq_batch_config_defaults, no provider mode. */
void llmq_batch_module_arg_defaults(llmq_batch_module_arg_t *arg,
                                    const char *path);

/*  Fill module (name "batch") with the manager's callbacks. */
void llmq_batch_module_init(llmq_broker_module_t *module,
                            llmq_batch_module_arg_t *arg);

/*  Self test: the broker actor with this module, a fake worker and a
    client on loopback. Returns 0 on success. */
int llmq_batch_module_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
