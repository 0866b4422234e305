/* pool.c - the pool's life (lanes.h): creating the lanes, stage 2's table,
 * disarming a member, the pool the head start uses, stopping. The status
 * path is in lanes.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "pool.h"

pthread_mutex_t hx_head_mu = PTHREAD_MUTEX_INITIALIZER;
struct hx_lanes *hx_head;

/* Allocates p with n lanes and a stage 2 table of nfd entries, all -1. */
static struct hx_lanes *alloc(int n, int nfd)
{
    struct hx_lanes *p = calloc(1, sizeof *p + (size_t)n * sizeof(struct hx_lane));
    int j;
    if (p == NULL) {
        return NULL;
    }
    if (nfd > 0 && (p->fd = malloc((size_t)nfd * sizeof *p->fd)) == NULL) {
        free(p);
        return NULL;
    }
    p->nfd = nfd;
    for (j = 0; j < nfd; j++) {
        p->fd[j] = -1;
    }
    return p;
}

void hx_lanes_destroy(struct hx_lanes *p)
{
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->idle);
    pthread_mutex_destroy(&p->mu);
    free(p->fd);
    free(p);
}

struct hx_lanes *hx_lanes_new(struct haext_vendor *host, int n, int nfd, int64_t stuck_ns)
{
    struct hx_lanes *p = alloc(n, nfd);
    sigset_t all, old;
    pthread_attr_t attr;
    int i, failed = 0;

    if (p == NULL) {
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    hx_cond_init(&p->idle);
    p->alive = 1; /* the owner's hold, dropped by hx_lanes_release */
    p->host = host;
    p->stuck_ns = stuck_ns;
    p->n = n;
    /* exit() waits for a call of libhaext's until it is this old (internal/hostapi/call.c). */
    hx_fence_set_stuck_ms((long)(stuck_ns / 1000000));
    for (i = 0; i < n; i++) {
        p->lane[i].pool = p;
        p->lane[i].waiters.next = p->lane[i].waiters.prev = &p->lane[i].waiters;
    }
    /* A lane inherits the mask of the thread that creates it. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_mutex_lock(&p->mu);
    for (i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, hx_lane_main, &p->lane[i]) != 0) {
            failed = 1;
            break;
        }
        p->alive++;
    }
    if (failed) {
        p->stop = 1;
        pthread_cond_broadcast(&p->go);
    }
    pthread_mutex_unlock(&p->mu);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (failed) {
        hx_lanes_release(p);
        return NULL;
    }
    return p;
}

int *hx_lanes_fds(struct hx_lanes *p, int *n)
{
    *n = p->nfd;
    return p->fd;
}

void hx_lanes_disarm(struct hx_lanes *p, int lane, uint64_t epoch)
{
    pthread_mutex_lock(&p->mu);
    if (lane >= 0 && lane < p->n) {
        p->lane[lane].armed = 0;
        if (epoch > p->lane[lane].epoch_min) {
            p->lane[lane].epoch_min = epoch;
        }
    }
    pthread_mutex_unlock(&p->mu);
}

void hx_head_set(struct hx_lanes *p)
{
    struct hx_lanes *old;
    pthread_mutex_lock(&hx_head_mu);
    old = hx_head;
    hx_head = p;
    if (p != NULL) {
        pthread_mutex_lock(&p->mu);
        p->alive++;
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&hx_head_mu);
    if (old != NULL) {
        hx_lanes_release(old);
    }
}

void hx_head_unset(struct hx_lanes *p)
{
    pthread_mutex_lock(&hx_head_mu);
    if (hx_head != p) {
        pthread_mutex_unlock(&hx_head_mu);
        return;
    }
    hx_head = NULL;
    pthread_mutex_unlock(&hx_head_mu);
    hx_lanes_release(p);
}

void hx_lanes_stop(struct hx_lanes *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
}

int hx_lanes_wait_idle(struct hx_lanes *p, int64_t wait_ns)
{
    int64_t deadline = hx_now_ns() + wait_ns;
    struct timespec ts = {deadline / 1000000000, deadline % 1000000000};
    int n;
    pthread_mutex_lock(&p->mu);
    while (p->running > 0 && pthread_cond_timedwait(&p->idle, &p->mu, &ts) != ETIMEDOUT) {
    }
    n = p->running;
    pthread_mutex_unlock(&p->mu);
    return n;
}

int hx_lanes_stuck(struct hx_lanes *p)
{
    int i, n = 0;
    int64_t now = hx_now_ns();
    pthread_mutex_lock(&p->mu);
    for (i = 0; i < p->n; i++) {
        if (p->lane[i].running && now - p->lane[i].started_ns >= p->stuck_ns) {
            n++;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}
