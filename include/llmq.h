/*  llmq.h - umbrella header of libllmq, the llmq client library.

    Include this one header to use llmq from C: the client API
    (llmq_client.h) and the library's version. The wire protocol headers
    (llmq_msg.h, llmq_value.h) are included by programs that speak the
    protocol themselves (broker, worker, tests).
*/
#ifndef LLMQ_H_INCLUDED
#define LLMQ_H_INCLUDED

#include "llmq_version.h" /* generated from project(VERSION) */
#include "llmq_client.h"
#include "llmq_curve.h"

#endif
