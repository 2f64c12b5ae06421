/*  llmq_queue.c - intrusive binary heap ordered by (priority desc, seq asc).

    Design: an array of node pointers; each node stores its own slot so that
    remove() and update() find it in O(1) and restore the heap in O(log n).
    The array grows by doubling and shrinks when it is a quarter full, so a
    drained million-request queue gives its memory back.
*/
#include "llmq_queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct _llmq_queue_t {
    llmq_queue_node_t **slots; //  Heap array of borrowed nodes
    size_t size;               //  Nodes in the heap
    size_t alloc;              //  Allocated slots
};

#define s_MIN_ALLOC 16

//  True if a goes before b.
static inline bool s_before(const llmq_queue_node_t *a,
                            const llmq_queue_node_t *b)
{
    if (a->priority != b->priority)
        return a->priority > b->priority;
    return a->seq < b->seq;
}

static inline void s_place(llmq_queue_t *self, size_t index,
                           llmq_queue_node_t *node)
{
    self->slots[index] = node;
    node->index = (uint32_t)index;
}

static void s_sift_up(llmq_queue_t *self, size_t index)
{
    llmq_queue_node_t *node = self->slots[index];
    while (index > 0) {
        size_t parent = (index - 1) / 2;
        if (!s_before(node, self->slots[parent]))
            break;
        s_place(self, index, self->slots[parent]);
        index = parent;
    }
    s_place(self, index, node);
}

static void s_sift_down(llmq_queue_t *self, size_t index)
{
    llmq_queue_node_t *node = self->slots[index];
    while (true) {
        size_t child = 2 * index + 1;
        if (child >= self->size)
            break;
        if (child + 1 < self->size &&
            s_before(self->slots[child + 1], self->slots[child]))
            child++;
        if (!s_before(self->slots[child], node))
            break;
        s_place(self, index, self->slots[child]);
        index = child;
    }
    s_place(self, index, node);
}

//  Resize the slot array; a failed shrink is harmless, so it is ignored.
static int s_resize(llmq_queue_t *self, size_t alloc)
{
    llmq_queue_node_t **slots = realloc(self->slots, alloc * sizeof(*slots));
    if (!slots)
        return -1;
    self->slots = slots;
    self->alloc = alloc;
    return 0;
}

void llmq_queue_node_init(llmq_queue_node_t *node)
{
    node->priority = 0;
    node->seq = 0;
    node->index = LLMQ_QUEUE_NONE;
}

bool llmq_queue_node_queued(const llmq_queue_node_t *node)
{
    return node->index != LLMQ_QUEUE_NONE;
}

llmq_queue_t *llmq_queue_new(void)
{
    llmq_queue_t *self = calloc(1, sizeof(*self));
    if (self && s_resize(self, s_MIN_ALLOC)) {
        free(self);
        self = NULL;
    }
    return self;
}

void llmq_queue_destroy(llmq_queue_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_queue_t *self = *self_p;
    for (size_t i = 0; i < self->size; i++)
        self->slots[i]->index = LLMQ_QUEUE_NONE;
    free(self->slots);
    free(self);
    *self_p = NULL;
}

int llmq_queue_push(llmq_queue_t *self, llmq_queue_node_t *node,
                    int64_t priority, int64_t seq)
{
    if (node->index != LLMQ_QUEUE_NONE)
        return -1;
    //  The slot index is 32 bits; the broker bounds its queues far below.
    if (self->size >= LLMQ_QUEUE_NONE - 1)
        return -1;
    if (self->size == self->alloc && s_resize(self, self->alloc * 2))
        return -1;
    node->priority = priority;
    node->seq = seq;
    self->slots[self->size] = node;
    node->index = (uint32_t)self->size;
    self->size++;
    s_sift_up(self, self->size - 1);
    return 0;
}

llmq_queue_node_t *llmq_queue_peek(const llmq_queue_t *self)
{
    return self->size ? self->slots[0] : NULL;
}

//  Take out the node at a slot and restore the heap around it.
static void s_remove_at(llmq_queue_t *self, size_t index)
{
    llmq_queue_node_t *node = self->slots[index];
    node->index = LLMQ_QUEUE_NONE;
    self->size--;
    if (index < self->size) {
        llmq_queue_node_t *last = self->slots[self->size];
        s_place(self, index, last);
        if (index > 0 && s_before(last, self->slots[(index - 1) / 2]))
            s_sift_up(self, index);
        else
            s_sift_down(self, index);
    }
    if (self->alloc > s_MIN_ALLOC && self->size < self->alloc / 4)
        s_resize(self, self->alloc / 2);
}

llmq_queue_node_t *llmq_queue_pop(llmq_queue_t *self)
{
    if (!self->size)
        return NULL;
    llmq_queue_node_t *node = self->slots[0];
    s_remove_at(self, 0);
    return node;
}

int llmq_queue_remove(llmq_queue_t *self, llmq_queue_node_t *node)
{
    size_t index = node->index;
    if (index == LLMQ_QUEUE_NONE || index >= self->size ||
        self->slots[index] != node)
        return -1;
    s_remove_at(self, index);
    return 0;
}

int llmq_queue_update(llmq_queue_t *self, llmq_queue_node_t *node,
                      int64_t priority, int64_t seq)
{
    if (node->index == LLMQ_QUEUE_NONE)
        return llmq_queue_push(self, node, priority, seq);
    if (llmq_queue_remove(self, node))
        return -1;
    return llmq_queue_push(self, node, priority, seq);
}

llmq_queue_node_t *llmq_queue_at(const llmq_queue_t *self, size_t index)
{
    return index < self->size ? self->slots[index] : NULL;
}

size_t llmq_queue_size(const llmq_queue_t *self)
{
    return self->size;
}

//  --------------------------------------------------------------------------
//  Selftest: the usage example. Items embed a node; the heap order is checked
//  against a brute-force model under random pushes, pops and removals.

typedef struct {
    int value;
    llmq_queue_node_t node;
} s_test_item_t;

int llmq_queue_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_queue: ");
    int rc = -1;
    enum { N = 5000 };
    s_test_item_t *items = calloc(N, sizeof(*items));
    llmq_queue_t *queue = llmq_queue_new();
    llmq_queue_t *other = llmq_queue_new();
    if (!items || !queue || !other)
        goto done;

    //  Basic order: priority first, then sequence.
    for (int i = 0; i < 6; i++) {
        items[i].value = i;
        llmq_queue_node_init(&items[i].node);
    }
    llmq_queue_push(queue, &items[0].node, 0, 1);
    llmq_queue_push(queue, &items[1].node, 5, 2);
    llmq_queue_push(queue, &items[2].node, 0, 3);
    llmq_queue_push(queue, &items[3].node, 5, 4);
    llmq_queue_push(queue, &items[4].node, 0, -1); //  front of class 0
    if (llmq_queue_push(queue, &items[4].node, 0, 9) != -1)
        goto done; //  already queued
    if (llmq_queue_remove(other, &items[4].node) != -1)
        goto done; //  not in that queue
    int expect[] = {1, 3, 4, 0, 2};
    for (int i = 0; i < 5; i++) {
        llmq_queue_node_t *node = llmq_queue_pop(queue);
        if (!node ||
            LLMQ_QUEUE_ITEM(node, s_test_item_t, node)->value != expect[i])
            goto done;
        if (llmq_queue_node_queued(node))
            goto done;
    }
    if (llmq_queue_pop(queue) || llmq_queue_peek(queue) ||
        llmq_queue_size(queue))
        goto done;

    //  Random model check: present[] says which items are in the queue.
    bool *present = calloc(N, sizeof(bool));
    if (!present)
        goto done;
    srand(42);
    for (int i = 0; i < N; i++) {
        items[i].value = i;
        llmq_queue_node_init(&items[i].node);
    }
    int64_t seq = 0;
    for (int step = 0; step < 40000; step++) {
        int i = rand() % N;
        int action = rand() % 4;
        if (action <= 1 && !present[i]) {
            llmq_queue_push(queue, &items[i].node, rand() % 5, ++seq);
            present[i] = true;
        } else if (action == 2 && present[i]) {
            if (llmq_queue_remove(queue, &items[i].node))
                break;
            present[i] = false;
        } else if (action == 3 && llmq_queue_size(queue)) {
            //  The popped node must be the best of all present ones.
            llmq_queue_node_t *node = llmq_queue_pop(queue);
            s_test_item_t *item = LLMQ_QUEUE_ITEM(node, s_test_item_t, node);
            for (int j = 0; j < N; j++)
                if (present[j] && j != item->value &&
                    s_before(&items[j].node, node)) {
                    free(present);
                    goto done;
                }
            present[item->value] = false;
        } else if (action == 1 && present[i])
            llmq_queue_update(queue, &items[i].node, rand() % 5, ++seq);
    }
    size_t count = 0;
    for (int j = 0; j < N; j++)
        count += present[j];
    free(present);
    if (count != llmq_queue_size(queue))
        goto done;
    //  Drain: strictly ordered.
    llmq_queue_node_t *prev = NULL;
    while (llmq_queue_size(queue)) {
        llmq_queue_node_t *node = llmq_queue_pop(queue);
        if (prev && s_before(node, prev))
            goto done;
        prev = node;
    }
    rc = 0;
done:
    llmq_queue_destroy(&queue);
    llmq_queue_destroy(&queue); //  idempotent
    llmq_queue_destroy(&other);
    free(items);
    if (verbose)
        printf("%s\n", rc == 0 ? "OK" : "FAILED");
    return rc;
}
