/* lanes.c - see lanes.h. */
#define _GNU_SOURCE /* POLLRDHUP */
#include <errno.h>
#include <poll.h>
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
    CK_SESSION_HANDLE done_session; /* the session of the round that set rv */
    CK_SLOT_ID done_slot;
    struct hx_node waiters; /* list head */
    /* The head start: armed after a round answered CKR_OK for a request
     * made at a current epoch; a_* is that request. */
    int armed;
    uint64_t epoch_min;
    int a_mode;
    CK_SLOT_ID a_slot;
    CK_SESSION_HANDLE a_session;
    int a_fd;
};

/* The members a status call about slot key starts ahead: those that
 * answered CKR_OK the last time. */
#define HX_PLANS 8
struct hx_plan {
    int used;
    CK_SLOT_ID key;
    int n;
    int lane[HX_MAX_LANES_PER_CALL];
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
    struct hx_plan plan[HX_PLANS];
    int plan_next;
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
        l->done_session = session;
        l->done_slot = slot;
        l->done = l->gen;
        l->done_ns = now_ns();
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
    /* exit() waits for a call of libhaext's until it is this old (fence.c). */
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

/* The rounds this thread's hx_head_start started, for its status call. */
struct hx_ticket {
    struct hx_lanes *p; /* held (alive) until hx_head_end */
    CK_SLOT_ID key;
    int64_t started_ns;
    int n;
    int lane[HX_MAX_LANES_PER_CALL];
    uint64_t gen[HX_MAX_LANES_PER_CALL];
};
static __thread struct hx_ticket ticket;

/* The pool hx_head_start uses, held (alive) while it is set. */
static pthread_mutex_t head_mu = PTHREAD_MUTEX_INITIALIZER;
static struct hx_lanes *head;

static void start_round(struct hx_lane *l, int64_t now, int mode, CK_SLOT_ID slot, CK_SESSION_HANDLE session)
{
    l->active = 1;
    l->gen++;
    l->started_ns = now;
    l->mode = mode;
    l->slot = slot;
    l->session = session;
}

/* The round t started on lane (the i-th request, usually its i-th entry),
 * or 0. */
static uint64_t ticket_gen(const struct hx_ticket *t, int i, int lane)
{
    int k;
    if (t == NULL) {
        return 0;
    }
    if (i < t->n && t->lane[i] == lane) {
        return t->gen[i];
    }
    for (k = 0; k < t->n; k++) {
        if (t->lane[k] == lane) {
            return t->gen[k];
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
 * epoch, for this very session and slot; disarms the others. A keyed call
 * makes the armed ones the plan of key. */
static void arm(struct hx_lanes *p, const struct hx_req *req, int n, const struct hx_res *res, int keyed,
                CK_SLOT_ID key)
{
    struct hx_plan *pl = NULL;
    int i;
    if (keyed) {
        pl = plan_find(p, key);
        if (pl == NULL) {
            pl = &p->plan[p->plan_next];
            p->plan_next = (p->plan_next + 1) % HX_PLANS;
            pl->used = 1;
            pl->key = key;
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
        l->a_fd = req[i].fd;
        if (pl != NULL) {
            pl->lane[pl->n++] = req[i].lane;
        }
    }
}

static void check(struct hx_lanes *p, const struct hx_req *req, int n, int64_t wait_ns, struct hx_res *res,
                  int keyed, CK_SLOT_ID key)
{
    struct hx_waiter *w = &tw;
    const struct hx_ticket *t = keyed && ticket.p == p && ticket.key == key ? &ticket : NULL;
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
        uint64_t ahead = ticket_gen(t, i, req[i].lane);
        nd->next = nd->prev = NULL;
        gen[i] = 0;
        if (ahead != 0 && ahead == l->gen && l->done == ahead) {
            /* The round this call started ahead has answered already. */
            res[i].rv = l->rv;
            res[i].took_ns = 0;
            res[i].session = l->done_session;
            continue;
        }
        if (l->active) {
            if (start - l->started_ns >= p->stuck_ns) {
                res[i].rv = HX_RV_STUCK; /* do not ask again */
                res[i].took_ns = 0;
                res[i].session = req[i].session;
                continue;
            }
            /* A younger call in flight: share it, but only until it is
             * stuck, or until this caller's own deadline, if sooner. */
            until = max64(until, min64(deadline, l->started_ns + p->stuck_ns));
        } else {
            start_round(l, start, req[i].mode, req[i].slot, req[i].session);
            kick = 1;
            until = deadline;
        }
        gen[i] = l->gen;
        wait_on(l, nd, w);
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
        stop_waiting(nd);
        if (l->done >= gen[i]) {
            res[i].rv = l->rv;
            res[i].took_ns = l->done_ns > start ? l->done_ns - start : 0;
            res[i].session = l->done_session;
        } else {
            res[i].rv = HX_RV_TIMEOUT;
            res[i].took_ns = until - start;
            res[i].session = req[i].session;
        }
    }
    arm(p, req, n, res, keyed, key);
    pthread_mutex_unlock(&p->mu);
}

void hx_lanes_check(struct hx_lanes *p, const struct hx_req *req, int n, int64_t wait_ns, struct hx_res *res)
{
    check(p, req, n, wait_ns, res, 0, 0);
}

void hx_lanes_check_slot(struct hx_lanes *p, const struct hx_req *req, int n, int64_t wait_ns, struct hx_res *res,
                         CK_SLOT_ID key)
{
    check(p, req, n, wait_ns, res, 1, key);
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
    pthread_mutex_lock(&head_mu);
    old = head;
    head = p;
    if (p != NULL) {
        pthread_mutex_lock(&p->mu);
        p->alive++;
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&head_mu);
    if (old != NULL) {
        hx_lanes_release(old);
    }
}

void hx_head_unset(struct hx_lanes *p)
{
    pthread_mutex_lock(&head_mu);
    if (head != p) {
        pthread_mutex_unlock(&head_mu);
        return;
    }
    head = NULL;
    pthread_mutex_unlock(&head_mu);
    hx_lanes_release(p);
}

/* The armed members of key's plan that are idle, with the connection each
 * was last found healthy on; the caller holds p->mu. */
static int head_candidates(struct hx_lanes *p, CK_SLOT_ID key, int *lane, struct pollfd *pfd, int *at, int *np)
{
    struct hx_plan *pl = p->stop ? NULL : plan_find(p, key);
    int i, n = 0;
    *np = 0;
    for (i = 0; pl != NULL && i < pl->n; i++) {
        struct hx_lane *l = &p->lane[pl->lane[i]];
        if (!l->armed || l->active) {
            continue;
        }
        lane[n] = pl->lane[i];
        at[n] = -1;
        if (l->a_fd >= 0) {
            at[n] = *np;
            pfd[*np].fd = l->a_fd;
            pfd[*np].events = POLLRDHUP;
            pfd[*np].revents = 0;
            (*np)++;
        }
        n++;
    }
    return n;
}

void hx_head_start(CK_SLOT_ID key)
{
    struct hx_lanes *p;
    struct pollfd pfd[HX_MAX_LANES_PER_CALL];
    int lane[HX_MAX_LANES_PER_CALL], at[HX_MAX_LANES_PER_CALL];
    int i, n, np, kick = 0, last;
    int64_t now;

    hx_head_end(); /* a call that did not end its head start (none does) */
    ticket.n = 0;
    pthread_mutex_lock(&head_mu);
    p = head;
    if (p == NULL) {
        pthread_mutex_unlock(&head_mu);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->alive++; /* this call's hold */
    pthread_mutex_unlock(&head_mu);
    n = head_candidates(p, key, lane, pfd, at, &np);
    pthread_mutex_unlock(&p->mu);

    /* Stage 2's quick half: a connection that shows a hang-up or an error
     * is not asked (read-only, zero timeout; interrupted: no head start). */
    if (np > 0 && poll(pfd, (nfds_t)np, 0) < 0) {
        n = 0;
    }
    pthread_mutex_lock(&p->mu);
    now = now_ns();
    for (i = 0; i < n; i++) {
        struct hx_lane *l = &p->lane[lane[i]];
        if (at[i] >= 0 && (pfd[at[i]].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) {
            l->armed = 0;
            continue;
        }
        if (!l->armed || l->active || p->stop) {
            continue;
        }
        start_round(l, now, l->a_mode, l->a_slot, l->a_session);
        ticket.lane[ticket.n] = lane[i];
        ticket.gen[ticket.n] = l->gen;
        ticket.n++;
        kick = 1;
    }
    if (kick) {
        pthread_cond_broadcast(&p->go);
        ticket.p = p; /* keeps this call's hold until hx_head_end */
        ticket.key = key;
        ticket.started_ns = now;
        pthread_mutex_unlock(&p->mu);
        return;
    }
    last = --p->alive == 0;
    pthread_mutex_unlock(&p->mu);
    if (last) {
        destroy(p);
    }
}

void hx_head_end(void)
{
    struct hx_lanes *p = ticket.p;
    struct hx_waiter *w = &tw;
    int64_t until;
    int k;

    ticket.p = NULL;
    if (p == NULL) {
        return;
    }
    /* The status call does not return while a round it started is still
     * in flight (Go may not have asked for it: a failed argument, a member
     * that failed stage 2 meanwhile): the host may finalize the module or
     * exit right after. It waits at most until the rounds are stuck. */
    if (!tw_ready) {
        cond_init_monotonic(&tw.cv);
        tw_ready = 1;
    }
    until = ticket.started_ns + p->stuck_ns;
    w->pending = 0;
    pthread_mutex_lock(&p->mu);
    for (k = 0; k < ticket.n; k++) {
        struct hx_lane *l = &p->lane[ticket.lane[k]];
        struct hx_node *nd = &w->nodes[k];
        nd->next = nd->prev = NULL;
        if (l->gen != ticket.gen[k] || l->done == ticket.gen[k]) {
            continue; /* answered */
        }
        wait_on(l, nd, w);
    }
    if (w->pending > 0) {
        struct timespec ts = {until / 1000000000, until % 1000000000};
        while (w->pending > 0 && pthread_cond_timedwait(&w->cv, &p->mu, &ts) != ETIMEDOUT) {
        }
        for (k = 0; k < ticket.n; k++) {
            stop_waiting(&w->nodes[k]);
        }
    }
    ticket.n = 0;
    pthread_mutex_unlock(&p->mu);
    hx_lanes_release(p); /* the hold hx_head_start kept */
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
