/*  batch_items.h - the batch items the batch tests send (batch_it.c,
    batch_api_test.c), packed one way. Test code only. */
#ifndef LLMQ_TEST_BATCH_ITEMS_H
#define LLMQ_TEST_BATCH_ITEMS_H

#include "llmq_value.h"

/*  One batch item: {custom_id, body: {max_tokens (if > 0), messages: [one
    user message: text]}}. */
static inline void llmq_test_pack_item(llmq_packer_t *p, const char *cid,
                                       const char *text, int max_tokens)
{
    llmq_packer_map(p, 2);
    llmq_packer_str(p, "custom_id");
    llmq_packer_str(p, cid);
    llmq_packer_str(p, "body");
    llmq_packer_map(p, max_tokens > 0 ? 2 : 1);
    if (max_tokens > 0) {
        llmq_packer_str(p, "max_tokens");
        llmq_packer_int(p, max_tokens);
    }
    llmq_packer_str(p, "messages");
    llmq_packer_array(p, 1);
    llmq_packer_map(p, 2);
    llmq_packer_str(p, "role");
    llmq_packer_str(p, "user");
    llmq_packer_str(p, "content");
    llmq_packer_str(p, text);
}

#endif
