#include "gw.h"
void gw_anthropic_messages(gw_call_t *c)
{
    gw_reply_error(c->req, GW_API_ANTHROPIC, 404, c->rid,
                   "invalid_request_error", NULL, NULL, "not yet");
}
void gw_anthropic_on_chunk(gw_req_t *r, const cJSON *chunk)
{
    (void)r;
    (void)chunk;
}
void gw_anthropic_on_result(gw_req_t *r, llmq_result_t *res)
{
    (void)r;
    (void)res;
}
