/* lanes.c - see lanes.h. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lanes.h"

struct hx_waiter;

/* A waiter's place in one lane's list of waiters. */
struct hx_node {
    struct hx_node *prev, *next;
    struct hx_waiter *w;
};

/* One status call waiting for its rounds; woken once, when the last ends. */
struct hx_waiter {
    pthread_cond_t cv;
    int pending;
    struct hx_node nodes[HX_MAX_LANES_PER_CALL];
};

struct hx_lane {
    struct hx_lanes *pool;
    /* Guarded by pool->mu. */
    int active;    /* a round is requested or running */
    int running;   /* the lane thread took it */
    uint64_t gen;  /* rounds started */
    uint64_t done; /* rounds finished */
    int64_t started_ns, done_ns;
    int mode;
    CK_SLOT_ID slot;
    CK_SESSION_HANDLE session;
    CK_RV rv;
    struct hx_node waiters; /* list head */
};

struct hx_lanes {
    pthread_mutex_t mu;
    pthread_cond_t go;
    struct haext_host *host;
    int64_t stuck_ns;
    int stop;
    int alive;   /* lane threads not yet exited, plus the owner's hold */
    int running; /* lanes inside a vendor call */
    pthread_cond_t idle; /* signalled when running drops to 0 */
    int n;
    struct hx_lane lane[];
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static void cond_init_monotonic(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

static void destroy(struct hx_lanes *p)
{
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->idle);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* The lightweight call itself, outside the pool's lock. */
static CK_RV call(struct haext_host *h, int mode, CK_SLOT_ID slot, CK_SESSION_HANDLE session)
{
    CK_SESSION_INFO si;
    CK_TOKEN_INFO ti;
    CK_RV rv;

    if (!hx_enter(h)) {
        return HX_RV_GATE;
    }
    switch (mode) {
    case HX_MODE_BORROW:
        rv = h->borrow(slot, &session);
        if (rv == CKR_OK) {
            rv = h->list->C_GetSessionInfo(session, &si);
            h->give_back(session, rv);
        }
        break;
    case HX_MODE_TOKEN:
        rv = h->list->C_GetTokenInfo(slot, &ti);
        break;
    default:
        rv = h->list->C_GetSessionInfo(session, &si);
        break;
    }
    hx_leave(h);
    return rv;
}

static void *lane_main(void *arg)
{
    struct hx_lane *l = arg;
    struct hx_lanes *p = l->pool;
    int last;

    /* Every signal stays blocked on a lane (set before it was created):
     * it never runs a host's handler, never takes a signal a sigwait-style
     * host collects, and a SIGPIPE a vendor call raises stays pending on
     * this thread, blocked, never delivered (a thread's own SIGPIPE is
     * directed at it; no other thread can take it, and it goes with the
     * thread): no system call to drain it on every round. */
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !(l->active && !l->running)) {
            pthread_cond_wait(&p->go, &p->mu);
        }
        if (p->stop) {
            break;
        }
        l->running = 1;
        p->running++;
        int mode = l->mode;
        CK_SLOT_ID slot = l->slot;
        CK_SESSION_HANDLE session = l->session;
        pthread_mutex_unlock(&p->mu);

        CK_RV rv = call(p->host, mode, slot, session);

        pthread_mutex_lock(&p->mu);
        if (--p->running == 0) {
            pthread_cond_broadcast(&p->idle);
        }
        l->rv = rv;
        l->done = l->gen;
        l->done_ns = now_ns();
        l->active = l->running = 0;
        while (l->waiters.next != &l->waiters) {
            struct hx_node *nd = l->waiters.next;
            nd->prev->next = nd->next;
            nd->next->prev = nd->prev;
            nd->next = nd->prev = NULL;
            if (--nd->w->pending == 0) {
                pthread_cond_signal(&nd->w->cv);
            }
        }
    }
    last = --p->alive == 0;
    pthread_mutex_unlock(&p->mu);
    if (last) {
        destroy(p);
    }
    return NULL;
}

struct hx_lanes *hx_lanes_new(struct haext_host *host, int n, int64_t stuck_ns)
{
    struct hx_lanes *p = calloc(1, sizeof *p + (size_t)n * sizeof(struct hx_lane));
    sigset_t all, old;
    pthread_attr_t attr;
    int i, failed = 0;

    if (p == NULL) {
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    cond_init_monotonic(&p->idle);
    p->alive = 1; /* the owner's hold, dropped by hx_lanes_release */
    p->host = host;
    p->stuck_ns = stuck_ns;
    p->n = n;
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
        if (pthread_create(&t, &attr, lane_main, &p->lane[i]) != 0) {
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

/* One waiter per thread: a status call waits on its own thread's. */
static __thread struct hx_waiter tw;
static __thread int tw_ready;

void hx_lanes_check(struct hx_lanes *p, const struct hx_req *req, int n, int64_t wait_ns, struct hx_res *res)
{
    struct hx_waiter *w = &tw;
    uint64_t gen[HX_MAX_LANES_PER_CALL];
    int64_t start = now_ns(), deadline = start + wait_ns, until = start;
    int i, kick = 0;

    if (!tw_ready) {
        cond_init_monotonic(&tw.cv);
        tw_ready = 1;
    }
    if (n > HX_MAX_LANES_PER_CALL) {
        n = HX_MAX_LANES_PER_CALL;
    }
    w->pending = 0;
    pthread_mutex_lock(&p->mu);
    for (i = 0; i < n; i++) {
        struct hx_lane *l = &p->lane[req[i].lane];
        struct hx_node *nd = &w->nodes[i];
        nd->next = nd->prev = NULL;
        gen[i] = 0;
        if (l->active) {
            if (start - l->started_ns >= p->stuck_ns) {
                res[i].rv = HX_RV_STUCK; /* do not ask again */
                res[i].took_ns = 0;
                continue;
            }
            /* A younger call in flight: share it, but only until it is
             * stuck, or until this caller's own deadline, if sooner. */
            until = max64(until, min64(deadline, l->started_ns + p->stuck_ns));
        } else {
            l->active = 1;
            l->gen++;
            l->started_ns = start;
            l->mode = req[i].mode;
            l->slot = req[i].slot;
            l->session = req[i].session;
            kick = 1;
            until = deadline;
        }
        gen[i] = l->gen;
        nd->w = w;
        nd->prev = l->waiters.prev;
        nd->next = &l->waiters;
        l->waiters.prev->next = nd;
        l->waiters.prev = nd;
        w->pending++;
    }
    if (kick) {
        pthread_cond_broadcast(&p->go);
    }
    if (w->pending > 0) {
        struct timespec ts = {until / 1000000000, until % 1000000000};
        while (w->pending > 0) {
            if (pthread_cond_timedwait(&w->cv, &p->mu, &ts) == ETIMEDOUT) {
                break;
            }
        }
    }
    for (i = 0; i < n; i++) {
        struct hx_lane *l = &p->lane[req[i].lane];
        struct hx_node *nd = &w->nodes[i];
        if (gen[i] == 0) {
            continue;
        }
        if (nd->next != NULL) { /* still waiting: leave the lane's list */
            nd->prev->next = nd->next;
            nd->next->prev = nd->prev;
            nd->next = nd->prev = NULL;
        }
        if (l->done >= gen[i]) {
            res[i].rv = l->rv;
            res[i].took_ns = l->done_ns > start ? l->done_ns - start : 0;
        } else {
            res[i].rv = HX_RV_TIMEOUT;
            res[i].took_ns = until - start;
        }
    }
    pthread_mutex_unlock(&p->mu);
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
    int64_t deadline = now_ns() + wait_ns;
    struct timespec ts = {deadline / 1000000000, deadline % 1000000000};
    int n;
    pthread_mutex_lock(&p->mu);
    while (p->running > 0 && pthread_cond_timedwait(&p->idle, &p->mu, &ts) != ETIMEDOUT) {
    }
    n = p->running;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void hx_lanes_release(struct hx_lanes *p)
{
    int last;
    pthread_mutex_lock(&p->mu);
    last = --p->alive == 0;
    pthread_mutex_unlock(&p->mu);
    if (last) {
        destroy(p);
    }
}

int hx_lanes_stuck(struct hx_lanes *p)
{
    int i, n = 0;
    int64_t now = now_ns();
    pthread_mutex_lock(&p->mu);
    for (i = 0; i < p->n; i++) {
        if (p->lane[i].running && now - p->lane[i].started_ns >= p->stuck_ns) {
            n++;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return n;
}
