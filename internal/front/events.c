/*
 * events.c - what the front saw the host do, queued for the engine in
 * order (hostapi.h): initialized, finalized, host errors (connection-class
 * CK_RVs, or a session the table knew that the module dropped), and an
 * overflow when more came than the queue holds before they were read.
 * libhaext.so reads them with front_events_wait and front_events_poll
 * (struct haext_front).
 */
#include <pthread.h>

#include "front.h"

#define EV_CAP 128

static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cv = PTHREAD_COND_INITIALIZER; /* never waited on with a deadline */
static struct haext_front_event evq[EV_CAP];
static int ev_head, ev_len, ev_overflow;
/* ev_len + ev_overflow, for readers without the lock (struct haext_front). */
int front_events_pending;

/* ev_mu held. */
static void count(void)
{
    __atomic_store_n(&front_events_pending, ev_len + ev_overflow, __ATOMIC_RELEASE);
}

void front_events_push(int kind, CK_SLOT_ID slot, CK_RV rv)
{
    int i;
    pthread_mutex_lock(&ev_mu);
    if (kind == HAEXT_EV_HOST_ERROR) {
        for (i = 0; i < ev_len; i++) {
            struct haext_front_event *q = &evq[(ev_head + i) % EV_CAP];
            if (q->kind == HAEXT_EV_HOST_ERROR && q->slot == slot) {
                q->rv = rv; /* unread: the newest wins */
                pthread_mutex_unlock(&ev_mu);
                return;
            }
        }
    }
    if (ev_len == EV_CAP) {
        ev_overflow = 1;
        ev_len = 0;
    }
    evq[(ev_head + ev_len) % EV_CAP] = (struct haext_front_event){kind, slot, rv};
    ev_len++;
    count();
    pthread_cond_signal(&ev_cv);
    pthread_mutex_unlock(&ev_mu);
}

static int take(struct haext_front_event *ev)
{
    if (ev_overflow) {
        ev_overflow = 0;
        *ev = (struct haext_front_event){HAEXT_EV_OVERFLOW, HAEXT_SLOT_NONE, CKR_OK};
        return 1;
    }
    if (ev_len == 0)
        return 0;
    *ev = evq[ev_head];
    ev_head = (ev_head + 1) % EV_CAP;
    ev_len--;
    return 1;
}

int front_events_wait(void)
{
    int n;
    pthread_mutex_lock(&ev_mu);
    while (ev_len == 0 && !ev_overflow)
        pthread_cond_wait(&ev_cv, &ev_mu);
    n = ev_len + ev_overflow;
    pthread_mutex_unlock(&ev_mu);
    return n;
}

int front_events_poll(struct haext_front_event *ev)
{
    int got;
    pthread_mutex_lock(&ev_mu);
    got = take(ev);
    count();
    pthread_mutex_unlock(&ev_mu);
    return got;
}

/* The fork child: the lock may be a lost thread's; no events. */
void front_events_reset(void)
{
    pthread_mutex_init(&ev_mu, NULL);
    pthread_cond_init(&ev_cv, NULL);
    ev_head = ev_len = ev_overflow = 0;
    front_events_pending = 0;
}
