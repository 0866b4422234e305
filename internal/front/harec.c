/*
 * harec.c - the recovery threads of the HA slots: one per lost member at
 * most, created with every signal blocked, each trying its member again
 * every half second until it is back or nobody uses its slot any more.
 *
 * Their vendor calls are the front's own, made inside two fences: the gate
 * (the host's C_Finalize waits for them, gate.c) and an exit fence of this
 * file's: its atexit handler, registered on the first call inside it (so
 * after the vendor was loaded, and run before the vendor's destructors),
 * closes the fence and waits for the calls inside it, 2 s at most (one
 * stuck in a hung member never returns).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <time.h>

#include "ha.h"

#define INTERVAL_MS 500
#define EXIT_WAIT_MS 2000

static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t rec_cv;
static int rec_inside, rec_closed, rec_registered;

static void at_exit(void)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += EXIT_WAIT_MS / 1000;
    pthread_mutex_lock(&rec_mu);
    rec_closed = 1;
    while (rec_inside > 0)
        if (pthread_cond_timedwait(&rec_cv, &rec_mu, &dl) != 0)
            break;
    pthread_mutex_unlock(&rec_mu);
}

static pthread_once_t once = PTHREAD_ONCE_INIT;
static void init(void)
{
    front_cond_init(&rec_cv);
}

int front_harec_enter(void)
{
    int ok;
    if (!front_gate_enter())
        return 0;
    pthread_once(&once, init);
    pthread_mutex_lock(&rec_mu);
    if (!rec_registered)
        rec_registered = atexit(at_exit) == 0; /* after the vendor's load: run before its destructors */
    ok = !rec_closed;
    if (ok)
        rec_inside++;
    pthread_mutex_unlock(&rec_mu);
    if (!ok)
        front_gate_leave();
    return ok;
}

void front_harec_leave(void)
{
    pthread_mutex_lock(&rec_mu);
    rec_inside--;
    pthread_cond_broadcast(&rec_cv);
    pthread_mutex_unlock(&rec_mu);
    front_gate_leave();
}

struct job {
    struct front_ha_slot *s;
    int m;
    front_harec_fn fn;
};

static int closed(void)
{
    int c;
    pthread_mutex_lock(&rec_mu);
    c = rec_closed;
    pthread_mutex_unlock(&rec_mu);
    return c;
}

static void *run(void *arg)
{
    struct job j = *(struct job *)arg;
    struct timespec nap = {0, INTERVAL_MS * 1000000L};
    free(arg);
    for (;;) {
        while (nanosleep(&nap, &nap) != 0)
            ;
        nap.tv_nsec = INTERVAL_MS * 1000000L;
        if (closed() || j.fn(j.s, j.m))
            break;
    }
    pthread_mutex_lock(&j.s->mu);
    j.s->m[j.m].recovering = 0;
    pthread_mutex_unlock(&j.s->mu);
    return NULL;
}

/* A detached thread running job j, with every signal blocked from its
 * first instruction (the host's mask is never touched). */
static int spawn(struct job *j)
{
    pthread_attr_t a;
    pthread_t t;
    sigset_t all;
    int rc;
    sigfillset(&all);
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setsigmask_np(&a, &all);
    rc = pthread_create(&t, &a, run, j);
    pthread_attr_destroy(&a);
    return rc;
}

int front_harec_start(struct front_ha_slot *s, int m, front_harec_fn fn)
{
    struct job *j;
    pthread_mutex_lock(&s->mu);
    if (s->m[m].recovering) {
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    j = malloc(sizeof *j);
    if (j == NULL) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    *j = (struct job){s, m, fn};
    if (spawn(j) != 0) {
        free(j);
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    s->m[m].recovering = 1;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* The fork child: no thread of ours is left; the exit handler stays. */
void front_harec_reset(void)
{
    pthread_mutex_init(&rec_mu, NULL);
    front_cond_init(&rec_cv);
    rec_inside = 0;
    rec_closed = 0;
}
