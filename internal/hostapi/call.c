/*
 * call.c - the fence of call.h: fork() never copies a vendor call of
 * libhaext's half done, and exit() never runs the vendor's destructors
 * under one. Compiled into libhaext.so only (package hostapi's cgo), so
 * there is one fence per process; the front module does not compile it.
 *
 * A child of fork() gets a copy of every lock of the process in the state
 * it was in at that instant, and only the thread that forked. If one of
 * libhaext's threads was inside the vendor module at that instant, the
 * child inherits whatever lock the module held for that call, held by a
 * thread the child does not have: the child's first call into the module
 * waits for it forever (SoftHSM2 does, in C_OpenSession). The host cannot
 * see libhaext's threads, so it cannot choose a safe moment to fork; and a
 * host that forks with none of its own threads inside the module must get a
 * child whose module works, as it would without libhaext.
 *
 * So every vendor call libhaext.so makes (call.h: hx_enter .. hx_leave)
 * is made inside the fence. A pthread_atfork prepare handler, registered when
 * the first call is made (after the vendor module was loaded, so that it
 * runs before any handler the module registered), stops new calls from
 * starting and waits for the calls in flight to return; the parent and
 * child handlers let calls start again.
 *
 * fork() never waits long for this. A call that is HX_FENCE_WAIT_MS old is
 * not waited for: a hung member's call may never return, and its thread
 * may then hold locks of the module's in the child too, as a host thread
 * stuck in that call would. So fork() waits at most HX_FENCE_WAIT_MS, and
 * not at all for a call that was already that old when fork() was called;
 * calls of healthy members take microseconds to milliseconds.
 *
 * exit() is the same danger later in a process's life: many hosts exit
 * without C_Finalize (Java, short CLIs), and exit() runs the vendor's
 * destructors (C++ statics registered when it was loaded, then the
 * library destructors) while libhaext's threads go on. A call of libhaext's
 * inside the vendor at that moment crashes the process (SoftHSM2,
 * p11-kit-proxy). So the fence also registers an atexit handler, after the
 * vendor was loaded (hx_fence_setup, called by every loader), which runs
 * before the vendor's destructors: it closes the fence for good (no call of
 * libhaext's starts again; hx_fence_enter answers 0) and waits for the calls
 * in flight that are younger than the engine's statusTimeout
 * (hx_fence_set_stuck_ms): older ones count as hung and are not waited for,
 * so exit() waits at most that long, and only while a member is slow.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "call.h"

#ifndef HX_FENCE_WAIT_MS
#define HX_FENCE_WAIT_MS 500
#endif

/* One thread's call inside the fence, on the fence's list while it lasts. */
struct fence_call {
    struct fence_call *prev, *next;
    int64_t start; /* CLOCK_MONOTONIC, ns */
    int depth;     /* nested enters on this thread (none are made today) */
};

static pthread_once_t fence_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t fence_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fence_cv; /* CLOCK_MONOTONIC; set up by fence_setup */
static int fence_forking;       /* a prepare handler is waiting: no new calls */
static int fence_exiting;       /* exit() has begun: no call starts again */
static _Atomic long fence_stuck_ms = 3000; /* statusTimeout: older calls are hung */
static struct fence_call fence_calls = {&fence_calls, &fence_calls, 0, 0};
static _Thread_local struct fence_call fence_me;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void init_cv(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&fence_cv, &a);
    pthread_condattr_destroy(&a);
}

/* Waits, fence_mu held, for every call younger than max_ms until it
 * returns or reaches that age. */
static void wait_young_calls(int64_t max_ms)
{
    for (;;) {
        int64_t now = mono_ns(), due = 0;
        struct fence_call *c;
        struct timespec ts;
        for (c = fence_calls.next; c != &fence_calls; c = c->next) {
            int64_t until = c->start + max_ms * 1000000;
            if (until > now && (due == 0 || until < due)) {
                due = until;
            }
        }
        if (due == 0) {
            break;
        }
        ts.tv_sec = (time_t)(due / 1000000000);
        ts.tv_nsec = (long)(due % 1000000000);
        pthread_cond_timedwait(&fence_cv, &fence_mu, &ts);
    }
}

/* fork(): waits for every call younger than HX_FENCE_WAIT_MS. Runs on the
 * forking thread: plain C. */
static void fence_prepare(void)
{
    pthread_mutex_lock(&fence_mu);
    fence_forking = 1;
    wait_young_calls(HX_FENCE_WAIT_MS);
    pthread_mutex_unlock(&fence_mu);
}

/* exit(): closes the fence for good and waits for every call that is not
 * hung yet. Runs on the exiting thread, before the vendor's destructors. */
static void fence_exit(void)
{
    pthread_mutex_lock(&fence_mu);
    fence_exiting = 1;
    wait_young_calls(fence_stuck_ms);
    pthread_mutex_unlock(&fence_mu);
}

static void fence_parent(void)
{
    pthread_mutex_lock(&fence_mu);
    fence_forking = 0;
    pthread_cond_broadcast(&fence_cv);
    pthread_mutex_unlock(&fence_mu);
}

/* The child has only the forking thread, which was inside no call: no call
 * is in flight, and the lock may have been taken by a thread it lacks. */
static void fence_child(void)
{
    pthread_mutex_init(&fence_mu, NULL);
    init_cv();
    fence_forking = 0;
    fence_calls.prev = fence_calls.next = &fence_calls;
    fence_me.prev = fence_me.next = NULL;
    fence_me.depth = 0;
}

static void fence_setup_once(void)
{
    init_cv();
    pthread_atfork(fence_prepare, fence_parent, fence_child);
    atexit(fence_exit);
}

void hx_fence_setup(void)
{
    pthread_once(&fence_once, fence_setup_once);
}

void hx_fence_set_stuck_ms(long ms)
{
    if (ms > 0) {
        fence_stuck_ms = ms;
    }
}

int hx_fence_enter(void)
{
    hx_fence_setup();
    if (fence_me.depth > 0) {
        fence_me.depth++;
        return 1;
    }
    pthread_mutex_lock(&fence_mu);
    while (fence_forking && !fence_exiting) {
        pthread_cond_wait(&fence_cv, &fence_mu);
    }
    if (fence_exiting) {
        pthread_mutex_unlock(&fence_mu);
        return 0;
    }
    fence_me.depth = 1;
    fence_me.start = mono_ns();
    fence_me.prev = fence_calls.prev;
    fence_me.next = &fence_calls;
    fence_calls.prev->next = &fence_me;
    fence_calls.prev = &fence_me;
    pthread_mutex_unlock(&fence_mu);
    return 1;
}

void hx_fence_leave(void)
{
    if (fence_me.depth == 0 || --fence_me.depth > 0) {
        return;
    }
    pthread_mutex_lock(&fence_mu);
    fence_me.prev->next = fence_me.next;
    fence_me.next->prev = fence_me.prev;
    fence_me.prev = fence_me.next = NULL;
    if (fence_forking || fence_exiting) {
        pthread_cond_broadcast(&fence_cv);
    }
    pthread_mutex_unlock(&fence_mu);
}
