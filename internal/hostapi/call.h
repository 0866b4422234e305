/*
 * call.h - the one way libhaext's C code calls the vendor module, with
 * call.c (the fence). Three parts, each for a reason of its own:
 *
 *   the fence   fork() and exit() wait, briefly, for the call to return, so
 *               that a child never inherits a lock the vendor took for it
 *               and the vendor's destructors never run under it (call.c).
 *               One per process: libhaext.so's. The front module
 *               (libhaext-pkcs11.so) compiles this header but not call.c,
 *               and makes no call inside the fence.
 *   the gate    a front module's (hostapi.h: enter/leave): no call of
 *               libhaext's while the host finalizes the module.
 *   the guard   a SIGPIPE the call raises (a write to a dead member's
 *               socket inside the vendor) never reaches the host's handler
 *               or default action.
 *
 * Who uses what:
 *
 *   a Go thread (pkg/cryptoki)      hx_call_begin .. hx_call_end: all three.
 *   a probe thread (pkg/probe)      hx_enter .. hx_leave: fence and gate, no
 *                                   guard (below).
 *   the front's own calls and its   hx_guard_begin .. hx_guard_end: on the
 *   write to stderr                 host's threads, or inside a probe
 *                                   thread's hx_enter already.
 *
 * The guard's one rule: block SIGPIPE, make the call, take one SIGPIPE if
 * the call raised it (none was pending before), then unblock SIGPIPE again
 * unless it was blocked before. Right on a host thread (a SIGPIPE that was
 * pending before is the host's, left alone; one that the call raised is
 * taken, even on a thread that blocks SIGPIPE to collect it) and on a Go
 * thread. A probe thread makes no guard: every signal stays blocked on it
 * for good, so a SIGPIPE a call raised stays pending there, directed at
 * that thread alone, and no handler ever sees it; nothing to take, nothing
 * to restore, and no system call on the status path.
 */
#ifndef HAEXT_CALL_H
#define HAEXT_CALL_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include "hostapi.h"

/* The fork and exit fence (call.c). hx_fence_enter returns 0, and makes no
 * call, once exit() has begun; every 1 is paired with one hx_fence_leave.
 * hx_fence_setup registers the fork and exit handlers: a loader calls it
 * right after it loaded the vendor module, so that the exit handler runs
 * before the vendor's destructors. hx_fence_set_stuck_ms: the age
 * (statusTimeout) past which exit() no longer waits for a call. */
void hx_fence_setup(void);
void hx_fence_set_stuck_ms(long ms);
int hx_fence_enter(void);
void hx_fence_leave(void);

/* Enters the fence and the gate of v: 1, or 0 and make no call. */
static inline int hx_enter(const struct haext_vendor *v)
{
    if (!hx_fence_enter()) {
        return 0;
    }
    if (v->enter == NULL || v->enter()) {
        return 1;
    }
    hx_fence_leave();
    return 0;
}

static inline void hx_leave(const struct haext_vendor *v)
{
    if (v->leave != NULL) {
        v->leave();
    }
    hx_fence_leave();
}

/* The SIGPIPE guard: the thread's mask before, and whether a SIGPIPE was
 * pending before (the host's, not ours to take). */
struct hx_guard {
    sigset_t old;
    int was_pending;
};

static inline void hx_guard_begin(struct hx_guard *g)
{
    sigset_t pipe, pending;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &g->old);
    sigemptyset(&pending);
    sigpending(&pending);
    g->was_pending = sigismember(&pending, SIGPIPE);
}

/* Takes the SIGPIPE the guarded call raised, if any, and restores SIGPIPE's
 * bit of the mask. Returns 1 when it took one (SIGPIPE does not queue). */
static inline int hx_guard_end(const struct hx_guard *g)
{
    sigset_t pipe;
    struct timespec zero = {0, 0};
    int sig = -1;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    if (!g->was_pending) {
        while ((sig = sigtimedwait(&pipe, NULL, &zero)) < 0 && errno == EINTR) {
        }
    }
    if (!sigismember(&g->old, SIGPIPE)) {
        pthread_sigmask(SIG_UNBLOCK, &pipe, NULL);
    }
    return sig == SIGPIPE;
}

/* One vendor call on a thread that may have SIGPIPE unblocked: fence, gate
 * and guard. 1, or 0 and make no call. */
static inline int hx_call_begin(const struct haext_vendor *v, struct hx_guard *g)
{
    if (!hx_enter(v)) {
        return 0;
    }
    hx_guard_begin(g);
    return 1;
}

/* Returns what hx_guard_end does. */
static inline int hx_call_end(const struct haext_vendor *v, const struct hx_guard *g)
{
    int taken = hx_guard_end(g);
    hx_leave(v);
    return taken;
}

#endif
