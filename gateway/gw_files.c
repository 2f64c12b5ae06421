#include "gw.h"
void gw_files_route(gw_call_t *c)
{
    gw_reply_error(c->req, GW_API_OPENAI, 404, c->rid, "invalid_request_error",
                   NULL, NULL, "not yet");
}
