/* Event queue: producers on any thread, one consumer that polls the eventfd. */
#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "evq.h"

int mig__evq_init(mig__evq *q)
{
	q->head = q->tail = NULL;
	q->signaled = false;
	q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->efd < 0)
		return MIG_ESYSTEM;
	if (pthread_mutex_init(&q->lock, NULL) != 0) {
		close(q->efd);
		q->efd = -1;
		return MIG_ESYSTEM;
	}
	return 0;
}

void mig__evq_destroy(mig__evq *q, void (*free_item)(mig__evq_item *))
{
	if (q->efd < 0)
		return;
	mig__evq_item *it = q->head;
	while (it) {
		mig__evq_item *next = it->next;
		if (free_item)
			free_item(it);
		it = next;
	}
	q->head = q->tail = NULL;
	pthread_mutex_destroy(&q->lock);
	close(q->efd);
	q->efd = -1;
}

void mig__evq_push(mig__evq *q, mig__evq_item *item)
{
	item->next = NULL;
	pthread_mutex_lock(&q->lock);
	if (q->tail)
		q->tail->next = item;
	else
		q->head = item;
	q->tail = item;
	/* One write per empty->non-empty transition keeps the syscall count at
	 * one per batch rather than one per item. */
	bool need_signal = !q->signaled;
	q->signaled = true;
	pthread_mutex_unlock(&q->lock);
	if (need_signal) {
		uint64_t one = 1;
		ssize_t n;
		do
			n = write(q->efd, &one, sizeof(one));
		while (n < 0 && errno == EINTR);
	}
}

mig__evq_item *mig__evq_take_all(mig__evq *q)
{
	pthread_mutex_lock(&q->lock);
	mig__evq_item *list = q->head;
	q->head = q->tail = NULL;
	if (q->signaled) {
		uint64_t value;
		ssize_t n;
		do
			n = read(q->efd, &value, sizeof(value));
		while (n < 0 && errno == EINTR);
		q->signaled = false;
	}
	pthread_mutex_unlock(&q->lock);
	return list;
}

bool mig__evq_wait(mig__evq *q, int timeout_ms)
{
	struct pollfd pfd = {.fd = q->efd, .events = POLLIN};
	int n;
	do
		n = poll(&pfd, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	return n > 0;
}
