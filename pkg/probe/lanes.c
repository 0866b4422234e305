/*
 * lanes.c - the status path in C (lanes.h): the head start a status call's
 * C entry point makes before it enters Go, the check that starts or joins
 * the members' rounds and waits for them, and the lanes that make the
 * vendor calls. The pool's life (creating, stopping, releasing it) is in
 * pool.c; the structures in pool.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <time.h>

#include "pool.h"

int64_t hx_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void hx_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

/* Puts w's node nd on lane l's list of waiters. */
static void wait_on(struct hx_lane *l, struct hx_node *nd, struct hx_waiter *w)
{
    nd->w = w;
    nd->prev = l->waiters.prev;
    nd->next = &l->waiters;
    l->waiters.prev->next = nd;
    l->waiters.prev = nd;
    w->pending++;
}

/* Takes nd off its lane's list, if it is still on one. */
static void stop_waiting(struct hx_node *nd)
{
    if (nd->next != NULL) {
        nd->prev->next = nd->next;
        nd->next->prev = nd->prev;
        nd->next = nd->prev = NULL;
    }
}

/* Waits, holding mu, until every round w waits on has ended or until; then
 * takes w's n nodes off their lists. */
static void wait_all(struct hx_waiter *w, pthread_mutex_t *mu, int64_t until, int n)
{
    struct timespec ts = {until / 1000000000, until % 1000000000};
    int k;
    while (w->pending > 0 && pthread_cond_timedwait(&w->cv, mu, &ts) != ETIMEDOUT) {
    }
    for (k = 0; k < n; k++) {
        stop_waiting(&w->nodes[k]);
    }
}

/* Drops a hold on p (a status call's, pool.c's hx_lanes_release). */
void hx_lanes_release(struct hx_lanes *p)
{
    int last;
    pthread_mutex_lock(&p->mu);
    last = --p->alive == 0;
    pthread_mutex_unlock(&p->mu);
    if (last) {
        hx_lanes_destroy(p);
    }
}

/* The lightweight call itself, outside the pool's lock. */
static CK_RV call(struct haext_vendor *h, int mode, CK_SLOT_ID slot, CK_SESSION_HANDLE session)
{
    CK_SESSION_INFO si;
    CK_TOKEN_INFO ti;
    CK_RV rv;

    /* The fence and the gate, no SIGPIPE guard: every signal stays blocked
     * on a probe thread for good (call.h). */
    if (!hx_enter(h)) {
        return HX_RV_GATE;
    }
    switch (mode) {
    case HX_MODE_BORROW:
        /* When no session can be lent (all busy, the own one being opened
         * or closed, or it cannot be opened: e.g. an SO is logged in), the
         * session-less call answers instead. What stopped the lending is
         * about the front, never the member's verdict. */
        if (h->borrow(slot, &session) == CKR_OK) {
            rv = h->list->C_GetSessionInfo(session, &si);
            h->give_back(session, rv);
        } else {
            rv = h->list->C_GetTokenInfo(slot, &ti);
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

void *hx_lane_main(void *arg)
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
        l->done_session = session;
        l->done_slot = slot;
        l->done = l->gen;
        l->done_ns = hx_now_ns();
        l->active = l->running = 0;
        while (l->waiters.next != &l->waiters) {
            struct hx_node *nd = l->waiters.next;
            stop_waiting(nd);
            if (--nd->w->pending == 0) {
                pthread_cond_signal(&nd->w->cv);
            }
        }
    }
    last = --p->alive == 0;
    pthread_mutex_unlock(&p->mu);
    if (last) {
        hx_lanes_destroy(p);
    }
    return NULL;
}

static void start_round(struct hx_lane *l, int64_t now, int mode, CK_SLOT_ID slot, CK_SESSION_HANDLE session)
{
    l->active = 1;
    l->gen++;
    l->started_ns = now;
    l->mode = mode;
    l->slot = slot;
    l->session = session;
}

/* The round head start h began on lane, or 0. */
static uint64_t head_gen(const struct hx_head *h, int lane)
{
    int k;
    for (k = 0; h != NULL && k < h->n; k++) {
        if (h->lane[k] == lane) {
            return h->gen[k];
        }
    }
    return 0;
}

static struct hx_plan *plan_find(struct hx_lanes *p, CK_SLOT_ID key)
{
    int k;
    for (k = 0; k < HX_PLANS; k++) {
        if (p->plan[k].used && p->plan[k].key == key) {
            return &p->plan[k];
        }
    }
    return NULL;
}

/* Arms the members that answered CKR_OK to a request made at a current
 * epoch, for this very session and slot; disarms the others. A check for a
 * status call (h) makes the armed ones the plan of its slot. */
static void arm(struct hx_lanes *p, const struct hx_req *req, int n, const struct hx_res *res,
                const struct hx_head *h)
{
    struct hx_plan *pl = NULL;
    int i;
    if (h != NULL) {
        pl = plan_find(p, h->key);
        if (pl == NULL) {
            pl = &p->plan[p->plan_next];
            p->plan_next = (p->plan_next + 1) % HX_PLANS;
            pl->used = 1;
            pl->key = h->key;
        }
        pl->n = 0;
    }
    for (i = 0; i < n; i++) {
        struct hx_lane *l = &p->lane[req[i].lane];
        if (res[i].rv != CKR_OK || req[i].epoch < l->epoch_min || res[i].session != req[i].session ||
            l->done_slot != req[i].slot) {
            l->armed = 0;
            continue;
        }
        l->armed = 1;
        l->a_mode = req[i].mode;
        l->a_slot = req[i].slot;
        l->a_session = req[i].session;
        l->a_ep = req[i].ep;
        if (pl != NULL) {
            pl->lane[pl->n++] = req[i].lane;
        }
    }
}

static void result(struct hx_res *r, CK_RV rv, int64_t took_ns, CK_SESSION_HANDLE session)
{
    r->rv = rv;
    r->took_ns = took_ns;
    r->session = session;
}

/* A check's first half, under p->mu: per request, the answer of the round
 * its head start began (take), or that round joined, or the round in
 * flight joined, or a new round. gen[i] is the round waited for (0: none);
 * *until is how long to wait. Returns whether a round was started. */
static int begin(struct hx_lanes *p, const struct hx_req *req, int n, const struct hx_head *take, int64_t start,
                 int64_t deadline, struct hx_waiter *w, uint64_t *gen, int64_t *until, struct hx_res *res)
{
    int i, kick = 0;
    for (i = 0; i < n; i++) {
        struct hx_lane *l = &p->lane[req[i].lane];
        struct hx_node *nd = &w->nodes[i];
        uint64_t ahead = head_gen(take, req[i].lane);
        nd->next = nd->prev = NULL;
        gen[i] = 0;
        if (ahead != 0 && ahead == l->gen && l->done == ahead) {
            result(&res[i], l->rv, 0, l->done_session); /* the round started ahead has answered */
            continue;
        }
        if (l->active) {
            if (start - l->started_ns >= p->stuck_ns) {
                result(&res[i], HX_RV_STUCK, 0, req[i].session); /* do not ask again */
                continue;
            }
            /* A younger call in flight: share it, but only until it is
             * stuck, or until this caller's own deadline, if sooner. */
            int64_t shared = l->started_ns + p->stuck_ns < deadline ? l->started_ns + p->stuck_ns : deadline;
            *until = shared > *until ? shared : *until;
        } else {
            start_round(l, start, req[i].mode, req[i].slot, req[i].session);
            kick = 1;
            *until = deadline;
        }
        gen[i] = l->gen;
        wait_on(l, nd, w);
    }
    return kick;
}

void hx_lanes_check(struct hx_lanes *p, const struct hx_req *req, int n, int64_t wait_ns, struct hx_res *res,
                    const struct hx_head *h)
{
    struct hx_waiter w;
    uint64_t gen[HX_MAX_LANES_PER_CALL];
    int64_t start = hx_now_ns(), until = start;
    int i;

    if (n > HX_MAX_LANES_PER_CALL) {
        n = HX_MAX_LANES_PER_CALL;
    }
    hx_cond_init(&w.cv);
    w.pending = 0;
    pthread_mutex_lock(&p->mu);
    if (begin(p, req, n, h != NULL && h->p == p ? h : NULL, start, start + wait_ns, &w, gen, &until, res)) {
        pthread_cond_broadcast(&p->go);
    }
    wait_all(&w, &p->mu, until, n);
    for (i = 0; i < n; i++) {
        struct hx_lane *l = &p->lane[req[i].lane];
        if (gen[i] == 0) {
            continue;
        }
        if (l->done >= gen[i]) {
            result(&res[i], l->rv, l->done_ns > start ? l->done_ns - start : 0, l->done_session);
        } else {
            result(&res[i], HX_RV_TIMEOUT, until - start, req[i].session);
        }
    }
    arm(p, req, n, res, h);
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&w.cv);
}

void hx_head_start(struct hx_head *h, CK_SLOT_ID key)
{
    struct hx_lanes *p;
    struct hx_plan *pl;
    int i, j;

    h->key = key;
    h->p = NULL;
    h->n = h->polled = 0;
    pthread_mutex_lock(&hx_head_mu);
    if ((p = hx_head) == NULL) {
        pthread_mutex_unlock(&hx_head_mu);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->alive++; /* this call's hold */
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&hx_head_mu);

    /* Stage 2's poll of the descriptors it last found healthy, for Go
     * (h->down) and for the head start: a member whose connection shows a
     * hang-up or an error is not asked. */
    h->polled = p->nfd < HX_MAX_POLL ? p->nfd : HX_MAX_POLL;
    for (j = 0; j < h->polled; j++) {
        h->fd[j] = __atomic_load_n(&p->fd[j], __ATOMIC_RELAXED);
    }
    if (hx_poll_down(h->fd, h->polled, h->down) < 0) {
        h->polled = 0;
    }
    pthread_mutex_lock(&p->mu);
    h->started_ns = hx_now_ns();
    pl = p->stop ? NULL : plan_find(p, key);
    for (i = 0; pl != NULL && i < pl->n; i++) {
        struct hx_lane *l = &p->lane[pl->lane[i]];
        if (l->a_ep >= 0 && l->a_ep < h->polled && (h->fd[l->a_ep] < 0 || h->down[l->a_ep])) {
            l->armed = 0; /* its connection hung up, or stage 2 found none since */
            continue;
        }
        if (l->armed && !l->active && l->a_ep < h->polled) { /* else not polled: the poll failed */
            start_round(l, h->started_ns, l->a_mode, l->a_slot, l->a_session);
            h->lane[h->n] = pl->lane[i];
            h->gen[h->n++] = l->gen;
        }
    }
    if (h->n > 0) {
        pthread_cond_broadcast(&p->go);
        h->p = p; /* keeps this call's hold until hx_head_end */
    }
    pthread_mutex_unlock(&p->mu);
    if (h->p == NULL) {
        hx_lanes_release(p);
    }
}

void hx_head_end(struct hx_head *h)
{
    struct hx_lanes *p = h->p;
    struct hx_waiter w;
    int k;

    h->p = NULL;
    if (p == NULL) {
        return;
    }
    /* The status call does not return while a round it started is still
     * in flight (Go may not have asked for it: a failed argument, a member
     * that failed stage 2 meanwhile): the host may finalize the module or
     * exit right after. It waits at most until the rounds are stuck. */
    hx_cond_init(&w.cv);
    w.pending = 0;
    pthread_mutex_lock(&p->mu);
    for (k = 0; k < h->n; k++) {
        struct hx_lane *l = &p->lane[h->lane[k]];
        struct hx_node *nd = &w.nodes[k];
        nd->next = nd->prev = NULL;
        if (l->gen != h->gen[k] || l->done == h->gen[k]) {
            continue; /* answered */
        }
        wait_on(l, nd, &w);
    }
    wait_all(&w, &p->mu, h->started_ns + p->stuck_ns, h->n);
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&w.cv);
    hx_lanes_release(p); /* the hold hx_head_start kept */
}
