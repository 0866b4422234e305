/*
 * call.h - how libhaext makes one vendor call, from any of its C code:
 * inside the fork fence (pkg/cryptoki/fence.c: fork() waits, briefly, for
 * the call to return, so that a child never inherits a lock the vendor took
 * for it), through the gate of a front module (hostapi.h), with SIGPIPE blocked on
 * the calling thread and a pending one drained before it is unblocked, so a
 * write to a dead member's socket inside the vendor never reaches the host.
 *
 *   struct hx_sigpipe g;
 *   if (!hx_enter(host)) return CKR_HA_NO_INSTANCE-ish;
 *   hx_sigpipe_block(&g);
 *   rv = host->list->C_...(...);
 *   drained += hx_sigpipe_restore(&g);
 *   hx_leave(host);
 */
#ifndef HAEXT_CALL_H
#define HAEXT_CALL_H

#include <signal.h>
#include <time.h>
#include <pthread.h>

#include "hostapi.h"

/* The fork and exit fence (pkg/cryptoki/fence.c), one for the whole
 * process. hx_fence_enter returns 0, and makes no call, once exit() has
 * begun; every 1 is paired with one hx_fence_leave. hx_fence_setup
 * registers the fork and exit handlers: a loader calls it right after it
 * loaded the vendor module, so that the exit handler runs before the
 * vendor's destructors. hx_fence_set_stuck_ms: the age (statusTimeout)
 * past which exit() no longer waits for a call. */
void hx_fence_setup(void);
void hx_fence_set_stuck_ms(long ms);
int hx_fence_enter(void);
void hx_fence_leave(void);

static inline int hx_enter(const struct haext_host *h)
{
    if (!hx_fence_enter()) {
        return 0;
    }
    if (h->enter == NULL || h->enter()) {
        return 1;
    }
    hx_fence_leave();
    return 0;
}

static inline void hx_leave(const struct haext_host *h)
{
    if (h->leave != NULL) {
        h->leave();
    }
    hx_fence_leave();
}

struct hx_sigpipe {
    int was_blocked;
};

static inline void hx_sigpipe_block(struct hx_sigpipe *g)
{
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    g->was_blocked = sigismember(&old, SIGPIPE);
}

/* Drains this thread's pending SIGPIPEs and unblocks SIGPIPE again, unless
 * it was blocked before hx_sigpipe_block: a SIGPIPE pending on such a
 * thread may be its owner's (a host thread that blocks it to collect it),
 * so it is left alone. Returns how many were drained. Threads of
 * libhaext's own that keep SIGPIPE blocked (the lanes) drain with
 * hx_sigpipe_drain. */
static inline int hx_sigpipe_drain(void)
{
    sigset_t set;
    struct timespec zero = {0, 0};
    int drained = 0;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    while (sigtimedwait(&set, NULL, &zero) == SIGPIPE) {
        drained++;
    }
    return drained;
}

static inline int hx_sigpipe_restore(const struct hx_sigpipe *g)
{
    sigset_t set;
    int drained;
    if (g->was_blocked) {
        return 0;
    }
    drained = hx_sigpipe_drain();
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    return drained;
}

#endif
