/*  llmq_queue.h - an intrusive priority queue: highest priority first, then
    lowest sequence number (arrival order).

    One home for the heap of every binary: the broker keeps one queue per
    (model, pool) for waiting requests and one more, keyed by expiry time,
    for deadlines; the worker keeps its requests waiting to retry in one,
    keyed by due time (priority 0, seq = due time). All must pop, peek and
    remove any element in O(log n) without a scan, and must not allocate per
    element (a million queued requests). So the queue is a binary heap of
   pointers to nodes embedded in the caller's own structs: the node remembers
   its slot, which makes removal by handle O(log n). Recover the outer struct
   with LLMQ_QUEUE_ITEM (container_of).

    Order: a before b if a.priority > b.priority, or equal priorities and
    a.seq < b.seq. To put an element at the front of its priority class (a
    requeue) give it a sequence number below every other one, e.g. from a
    counter that counts down from -1.

    Ownership: the queue never owns or frees nodes; destroying a queue with
    nodes in it just forgets them (their index is reset).
*/
#ifndef LLMQ_QUEUE_H_INCLUDED
#define LLMQ_QUEUE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Slot value of a node that is in no queue. */
#define LLMQ_QUEUE_NONE UINT32_MAX

/*  Embed one of these per queue the struct can be in. Initialise with
    llmq_queue_node_init before first use. */
typedef struct {
    int64_t priority; //  Higher first
    int64_t seq;      //  Then lower first
    uint32_t index;   //  Slot in the heap, LLMQ_QUEUE_NONE if out
} llmq_queue_node_t;

/*  container_of: the struct of type `type` whose member `member` is node. */
#define LLMQ_QUEUE_ITEM(node, type, member)                                    \
    ((type *)((char *)(node)-offsetof(type, member)))

typedef struct _llmq_queue_t llmq_queue_t;

/*  Mark a node as in no queue. */
void llmq_queue_node_init(llmq_queue_node_t *node);

/*  True if the node is in a queue. */
bool llmq_queue_node_queued(const llmq_queue_node_t *node);

/*  Create an empty queue. NULL if out of memory. */
llmq_queue_t *llmq_queue_new(void);

/*  Destroy the queue (not its nodes); NULLs *self_p. Idempotent. */
void llmq_queue_destroy(llmq_queue_t **self_p);

/*  Insert a node that is in no queue, with its order key. Returns 0, or -1
    if the node is already queued or memory ran out. */
int llmq_queue_push(llmq_queue_t *self, llmq_queue_node_t *node,
                    int64_t priority, int64_t seq);

/*  The first node, or NULL if empty. Borrowed. */
llmq_queue_node_t *llmq_queue_peek(const llmq_queue_t *self);

/*  Remove and return the first node, or NULL if empty. */
llmq_queue_node_t *llmq_queue_pop(llmq_queue_t *self);

/*  Remove a node that is in this queue. Returns 0, or -1 if it is not in
    this queue (nothing changes). */
int llmq_queue_remove(llmq_queue_t *self, llmq_queue_node_t *node);

/*  Change the order key of a node in this queue (or push it if it is in no
    queue). Returns 0 or -1. */
int llmq_queue_update(llmq_queue_t *self, llmq_queue_node_t *node,
                      int64_t priority, int64_t seq);

/*  The node at slot index (0 <= index < size), in heap order, not sorted:
    for walking every node, e.g. to update them all. NULL if out of range. */
llmq_queue_node_t *llmq_queue_at(const llmq_queue_t *self, size_t index);

/*  Number of nodes in the queue. */
size_t llmq_queue_size(const llmq_queue_t *self);

/*  Self test; returns 0 on success. */
int llmq_queue_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
