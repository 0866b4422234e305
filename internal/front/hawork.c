/*
 * hawork.c - the operation timeout of an HA group (VirtualTokenNN
 * LibHAExtOpTimeout, off by default). With it, each member's calls of an
 * operation run on one worker thread of that member's (created on first
 * use, every signal blocked), and the host's thread waits for the answer
 * at most the timeout. A call not answered in time is left to its worker:
 * the member is stuck and gets no new work until that call returns, when
 * the worker cleans up after it (orphan); the host's thread goes on with
 * the next member. So one thread per member at most is ever stuck, and a
 * hung member never holds a host thread longer than the timeout. A job's
 * arguments and results are its own memory, never the host's: an orphaned
 * call writes nothing the host still uses.
 *
 * The worker's vendor calls are inside the fences (front_harec_enter):
 * the host's C_Finalize and exit() wait for them.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "ha.h"

struct job {
    struct job *next;
    front_hawork_fn fn;
    front_hawork_orphan orphan;
    void *arg;
    CK_RV rv;
    int done, abandoned;
};

struct front_ha_worker {
    pthread_mutex_t mu;
    pthread_cond_t todo, answered;
    struct job *head, *tail;
};

static pthread_mutex_t make_mu = PTHREAD_MUTEX_INITIALIZER;

static void *work(void *arg)
{
    struct front_ha_member *x = arg;
    struct front_ha_worker *w = x->worker;
    for (;;) {
        struct job *j;
        pthread_mutex_lock(&w->mu);
        while (w->head == NULL)
            pthread_cond_wait(&w->todo, &w->mu);
        j = w->head;
        w->head = j->next;
        if (w->head == NULL)
            w->tail = NULL;
        pthread_mutex_unlock(&w->mu);
        if (front_harec_enter()) {
            j->rv = j->fn(j->arg);
            front_harec_leave();
        } else {
            j->rv = CKR_DEVICE_ERROR; /* exiting, or the host finalized: nothing is called */
        }
        pthread_mutex_lock(&w->mu);
        j->done = 1;
        if (j->abandoned) {
            atomic_store(&x->stuck, 0); /* the member answered again */
            pthread_mutex_unlock(&w->mu);
            j->orphan(j->arg, j->rv);
            free(j);
            continue;
        }
        pthread_cond_broadcast(&w->answered);
        pthread_mutex_unlock(&w->mu);
    }
    return NULL;
}

/* Member x's worker, started on first use; NULL when none can be. */
static struct front_ha_worker *worker(struct front_ha_member *x)
{
    struct front_ha_worker *w;
    pthread_attr_t a;
    pthread_t t;
    sigset_t all;
    pthread_mutex_lock(&make_mu);
    if ((w = x->worker) != NULL || (w = calloc(1, sizeof *w)) == NULL) {
        pthread_mutex_unlock(&make_mu);
        return w;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->todo, NULL);
    front_cond_init(&w->answered);
    x->worker = w;
    sigfillset(&all);
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setsigmask_np(&a, &all);
    if (pthread_create(&t, &a, work, x) != 0) {
        x->worker = NULL;
        free(w);
        w = NULL;
    }
    pthread_attr_destroy(&a);
    pthread_mutex_unlock(&make_mu);
    return w;
}

int front_hawork_run(struct front_ha_slot *s, int m, front_hawork_fn fn, front_hawork_orphan orphan, void *arg,
                     CK_RV *rv)
{
    struct front_ha_member *x = &s->m[m];
    struct front_ha_worker *w = worker(x);
    struct timespec dl;
    struct job *j;
    int answered;
    if (w == NULL || (j = calloc(1, sizeof *j)) == NULL) {
        *rv = fn(arg); /* no thread to spare: on the host's own */
        return 0;
    }
    *j = (struct job){.fn = fn, .orphan = orphan, .arg = arg};
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += s->op_timeout_ms / 1000;
    dl.tv_nsec += (s->op_timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->mu);
    if (w->tail != NULL)
        w->tail->next = j;
    else
        w->head = j;
    w->tail = j;
    pthread_cond_signal(&w->todo);
    while (!j->done)
        if (pthread_cond_timedwait(&w->answered, &w->mu, &dl) != 0)
            break;
    answered = j->done;
    if (!answered) {
        /* Left to the worker, which frees it (and a job still queued
         * behind it waits its turn, then is orphaned the same way). */
        j->abandoned = 1;
        atomic_store(&x->stuck, 1);
    }
    pthread_mutex_unlock(&w->mu);
    if (!answered)
        return -1;
    *rv = j->rv;
    free(j);
    return 0;
}

/* The fork child: the workers are gone with their threads. */
void front_hawork_reset(struct front_ha_member *x)
{
    pthread_mutex_init(&make_mu, NULL); /* a lost thread's, maybe */
    x->worker = NULL;
    atomic_store(&x->stuck, 0);
}
