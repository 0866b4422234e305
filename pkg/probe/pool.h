/*
 * pool.h - the lanes' own structures, shared by lanes.c (the status path:
 * the lanes, the check, the head start) and pool.c (the pool's life).
 * Not for Go: lanes.h is the pool's interface.
 */
#ifndef HAEXT_POOL_H
#define HAEXT_POOL_H

#include <pthread.h>
#include <stdint.h>

#include "lanes.h"

struct hx_waiter;

/* A waiter's place in one lane's list of waiters. */
struct hx_node {
    struct hx_node *prev, *next;
    struct hx_waiter *w;
};

/* One status call waiting for its rounds; woken once, when the last ends.
 * It lives on the waiting call's stack. */
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
    int a_ep; /* the member's endpoint in stage 2's table, or -1 */
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
    struct haext_vendor *host;
    int64_t stuck_ns;
    int stop;
    int alive;   /* lane threads not yet exited, plus the owner's hold */
    int running; /* lanes inside a vendor call */
    pthread_cond_t idle; /* signalled when running drops to 0 */
    struct hx_plan plan[HX_PLANS];
    int plan_next;
    /* Stage 2's table (hx_lanes_fds): per endpoint, the descriptor that
     * last proved it healthy, or -1. Go writes it, the head start reads it,
     * both with atomic accesses. */
    int nfd;
    int *fd;
    int n;
    struct hx_lane lane[];
};

/* pool.c: frees p (its last hold is gone). */
void hx_lanes_destroy(struct hx_lanes *p);

/* lanes.c */
int64_t hx_now_ns(void);
void hx_cond_init(pthread_cond_t *cv); /* on CLOCK_MONOTONIC */
void *hx_lane_main(void *arg);

/* The pool the head start uses (hx_head_set), held (alive) while set. */
extern pthread_mutex_t hx_head_mu;
extern struct hx_lanes *hx_head;

#endif
