/*  llmq.h - umbrella header of libllmq, the llmq client library.

    Include this one header to use llmq from C: the client API
    (llmq_client.h) and the library's version. The wire protocol headers
    (llmq_msg.h, llmq_value.h) are included by programs that speak the
    protocol themselves (broker, worker, tests).
*/
#ifndef LLMQ_H_INCLUDED
#define LLMQ_H_INCLUDED

#define LLMQ_VERSION_MAJOR 0
#define LLMQ_VERSION_MINOR 1
#define LLMQ_VERSION_PATCH 0
#define LLMQ_MAKE_VERSION(major, minor, patch)                                 \
    ((major)*10000 + (minor)*100 + (patch))
#define LLMQ_VERSION                                                           \
    LLMQ_MAKE_VERSION(LLMQ_VERSION_MAJOR, LLMQ_VERSION_MINOR,                  \
                      LLMQ_VERSION_PATCH)
#define LLMQ_VERSION_STRING "0.1.0"

#include "llmq_client.h"
#include "llmq_curve.h"

#endif
