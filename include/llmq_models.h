/*  llmq_models.h - what llmq knows about models: capabilities and prices.

    One table per process: built in for well-known OpenAI and Anthropic
    models (context window, largest output, chat / embeddings / streaming /
    tools / images, USD per 1M tokens: input, cached input, output,
    reasoning, Batch API discount; LLMQ_MODELS_TAKEN says when the numbers
    were taken), plus what the process learns: a worker's YAML
    `capabilities`, the context window its provider's `/models` reports,
    and, at the broker, the `caps` workers report in `hello`
    (PROTOCOL.md 3.8).

    A name is found exactly, else without its dated-snapshot suffix
    (`gpt-4o-2024-08-06` -> `gpt-4o`, `claude-sonnet-4-5-20250929` ->
    `claude-sonnet-4-5`, `-0125`, `-latest`). A model the table does not
    know is never checked and never priced from it.

    llmq_models_check is the broker's refusal before queueing: a request
    that cannot fit its model (prompt estimate plus max_tokens over the
    context window, max_tokens over the largest output, embeddings to a
    chat-only model, chat to an embeddings-only model, a stream, tools or
    images to a model without them). The prompt estimate is the bytes of
    the request's text strings / 4 (images, data: URLs and URLs not
    counted): about one token per 4 bytes of English, less for code or
    non-Latin text, so it rarely overshoots.

    Ownership: the table owns its entries; llmq_model_info_t pointers
    returned are borrowed until the next change to the table; frames and
    strings returned belong to the caller.
*/
#ifndef LLMQ_MODELS_H_INCLUDED
#define LLMQ_MODELS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  When the built-in numbers were taken (public pricing and model pages). */
#define LLMQ_MODELS_TAKEN "2026-12-02"

/*  Capability flags. */
#define LLMQ_MODEL_CHAT 0x01       /* chat (and completion) requests */
#define LLMQ_MODEL_EMBEDDINGS 0x02 /* embedding requests */
#define LLMQ_MODEL_STREAMING 0x04  /* stream: true */
#define LLMQ_MODEL_TOOLS 0x08      /* tools / function calling */
#define LLMQ_MODEL_IMAGES 0x10     /* image input */

typedef struct {
    char *name;            /* as stored (canonical for built-ins) */
    int64_t context;       /* context window, tokens in + out; 0 unknown */
    int64_t max_output;    /* largest output (max_tokens); 0 unknown */
    unsigned flags;        /* LLMQ_MODEL_*, meaningful when flags_known */
    bool flags_known;      /* false: no capability checks */
    double input;          /* USD per 1M prompt tokens; < 0 unknown */
    double cached_input;   /* per 1M cached prompt tokens; < 0 = input */
    double output;         /* per 1M completion tokens */
    double reasoning;      /* per 1M reasoning tokens; < 0 = output */
    double batch_discount; /* fraction off through a Batch API (0.5) */
    bool learned;          /* from config, /models or hello (reported) */
} llmq_model_info_t;

/*  Tokens of one answer, for pricing. cached is part of prompt, reasoning
    part of completion (as OpenAI counts them). */
typedef struct {
    int64_t prompt;
    int64_t cached;
    int64_t completion;
    int64_t reasoning;
} llmq_tokens_t;

typedef struct _llmq_models_t llmq_models_t;

/*  A table holding the built-in models. NULL on failure. */
llmq_models_t *llmq_models_new(void);

/*  Destroy; NULLs *self_p. Idempotent. */
void llmq_models_destroy(llmq_models_t **self_p);

/*  The entry for model (exact, then without a date suffix), or NULL. */
const llmq_model_info_t *llmq_models_lookup(const llmq_models_t *self,
                                            const char *model);

/*  Learn what is known of a model (config, /models, hello): context and
    max_output when > 0 replace the entry's (an entry reached by a date
    suffix is copied under the new name first); flags when flags_known.
    Prices are never learned. Returns 0 or -1. */
int llmq_models_learn(llmq_models_t *self, const char *model, int64_t context,
                      int64_t max_output, bool flags_known, unsigned flags);

/*  Learn from a provider's `GET /models` answer (JSON text): each entry of
    `data` with an `id` and a context window (vLLM `max_model_len`,
    `context_length`, `context_window`, `max_context_length`,
    `max_input_tokens`) and/or a largest output (`max_output_tokens`,
    `max_completion_tokens`, `top_provider.max_completion_tokens`).
    Returns the number of models learned (0 for an answer without any). */
int llmq_models_learn_json(llmq_models_t *self, const char *json, size_t len);

/*  The `caps` of a hello (PROTOCOL.md 3.8): a msgpack map model ->
    {context, max_output, chat, embeddings, streaming, tools, images} of the
    learned entries whose name is in models[] (all if models names "*"),
    at most max_bytes. NULL (and *size 0) when there is nothing to report.
    Caller frees. */
uint8_t *llmq_models_caps_pack(const llmq_models_t *self,
                               const char *const *models, size_t count,
                               size_t max_bytes, size_t *size);

/*  Learn a hello's `caps` (msgpack bytes). A model reported by several
    workers keeps the largest context and output. Returns the number of
    models learned, or -1 if the value is not a map. */
int llmq_models_caps_learn(llmq_models_t *self, const uint8_t *caps,
                           size_t size);

/*  Can this request fit its model? op "chat", "completion" or
    "embedding"; payload the request body (msgpack map; only its top-level
    map is walked, and text strings for the estimate). Returns 0 (fits,
    or the model is unknown) or 1 with the reason in why (names the model,
    the numbers and the limit). Cost: one lookup for an unknown model. */
int llmq_models_check(const llmq_models_t *self, const char *model,
                      const char *op, bool stream, const void *payload,
                      size_t size, char *why, size_t whylen);

/*  The cached and reasoning tokens of an OpenAI-shaped answer body:
    usage.prompt_tokens_details.cached_tokens and
    usage.completion_tokens_details.reasoning_tokens (left as they are
    when absent). */
void llmq_models_tokens_from_json(const cJSON *body, llmq_tokens_t *tokens);

/*  Cost in USD of tokens at info's prices (batch: Batch API discount).
    0 for a NULL info or an unpriced entry. */
double llmq_models_cost(const llmq_model_info_t *info,
                        const llmq_tokens_t *tokens, bool batch);

/*  Self test; returns 0 on success. */
int llmq_models_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
