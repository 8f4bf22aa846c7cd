/* A multi-producer queue with an eventfd that is readable while the queue is
 * non-empty. Used for the I/O thread's events to the dispatching thread. */
#ifndef MIG_EVQ_H
#define MIG_EVQ_H

#include <pthread.h>

#include "common.h"

typedef struct mig__evq_item {
	struct mig__evq_item *next;
} mig__evq_item;

typedef struct mig__evq {
	pthread_mutex_t lock;
	mig__evq_item *head;
	mig__evq_item *tail;
	int efd;       /* eventfd, readable while items are queued */
	bool signaled; /* efd has been written and not yet drained */
} mig__evq;

int mig__evq_init(mig__evq *q);
/* Frees remaining items with free_item (may be NULL to leak-check). */
void mig__evq_destroy(mig__evq *q, void (*free_item)(mig__evq_item *));
void mig__evq_push(mig__evq *q, mig__evq_item *item);
/* Takes every queued item, oldest first, and clears the eventfd. */
mig__evq_item *mig__evq_take_all(mig__evq *q);
/* Waits until the queue is non-empty or timeout_ms passes (<0: forever).
 * Returns true if items are queued. */
bool mig__evq_wait(mig__evq *q, int timeout_ms);

#endif
