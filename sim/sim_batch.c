#include "sim.h"
#include <stdlib.h>
struct sim_batches_s { sim_t *sim; };
sim_batches_t *sim_batches_new(sim_t *sim, const sim_batch_cfg_t *cfg) { (void) cfg; sim_batches_t *b = calloc(1, sizeof(*b)); b->sim = sim; return b; }
void sim_batches_destroy(sim_batches_t **p) { free(*p); *p = NULL; }
void sim_batches_files(sim_batches_t *self, struct evhttp_request *req, const char *path) { (void) path; sim_reply_error(self->sim, req, SIM_R_FILES, false, 404, "todo", NULL, NULL); }
void sim_batches_openai(sim_batches_t *self, struct evhttp_request *req, const char *path) { (void) path; sim_reply_error(self->sim, req, SIM_R_BATCHES, false, 404, "todo", NULL, NULL); }
void sim_batches_anthropic(sim_batches_t *self, struct evhttp_request *req, const char *path) { (void) path; sim_reply_error(self->sim, req, SIM_R_MBATCHES, true, 404, "todo", NULL, NULL); }
void sim_batches_stats(sim_batches_t *self, struct evbuffer *out) { (void) self; (void) out; }
