/*
 * capi.c - the CA_* entry points of include/cryptoki_ha.h. Each one is a C
 * function; the status calls enter Go (capi.go) through one wrapper,
 * haext_status, which decides in C what Go cannot:
 *
 *  - Signal masks. A C thread's first call into Go leaves signals unblocked
 *    on it that the runtime wants (SIGCHLD, SIGPROF, SIGURG, signal 34 =
 *    glibc's SIGRTMIN, the fault signals, ...). The wrapper saves the
 *    caller's mask and restores it on the way out, so every export returns
 *    with the mask exactly as it was. While Go runs on the thread, only the
 *    fault signals (SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV) are
 *    unblocked, so that a fault in Go code becomes a panic the export
 *    recovers from; the kernel sends a fault to the thread that faulted, so
 *    this takes no signal meant for the host. The runtime's preemption
 *    signal (SIGURG) stays as the host has it: a thread that blocks it is
 *    only preempted at function calls, which is all this code needs.
 *
 *  - The Go runtime's own threads. They copy the signal mask of the thread
 *    that loaded the library. The constructors below block every signal on
 *    the loading thread while the runtime starts, and restore the mask
 *    right after, so that the runtime's threads keep every signal blocked
 *    that a C library may block (the runtime unblocks a fixed few anyway;
 *    docs/ARCHITECTURE.md, "Threads, signals and fork").
 *
 *  - fork(). A child created after the library was loaded has none of the
 *    Go runtime's threads; Go code there hangs. A pthread_atfork child
 *    handler marks such a child (no system call on the way in, unlike
 *    getpid), and status calls there return CKR_FUNCTION_FAILED without
 *    entering Go.
 *
 *  - The last error, per thread like dlerror: a malloc'd string in
 *    thread-specific data (a pthread key rather than __thread, which would
 *    grow the library's static TLS block), set from what Go returns and
 *    freed on success (unless Go has a notice for the caller), so
 *    CA_GetHAExtLastError needs no Go.
 *
 *  - The head start. Before it enters Go, the wrapper starts the rounds of
 *    the members that answered last time for the same slot, and makes
 *    stage 2's poll (hx_head_start, pkg/probe/lanes.h): a lock, one poll
 *    and one broadcast on this thread, no vendor call, so the lanes work
 *    while Go runs stages 1 and 2. What it did is a struct hx_head in this
 *    frame, handed to Go (one call, haextState) and, after Go returned, to
 *    hx_head_end, which waits for the rounds Go did not take.
 *
 * Nothing here assumes which shared library it is linked into.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "_cgo_export.h"
#include "callback.h" /* CA_HAExtSetStateCallback: callback.c */
#include "lanes.h" /* the head start: pkg/probe/lanes.c, linked into the same library */

/* Set in a child of fork() (pthread_atfork). */
static volatile int haext_forked;

/* Thread-specific last error: NULL (none), haext_fork_reason, or a string
 * malloc'd by the Go side (C.CString). */
static pthread_key_t haext_reason_key;
static int haext_reason_key_ok;
static char haext_fork_reason[] =
    "called in a child process that fork() created after libhaext was loaded: the Go runtime "
    "does not survive fork(); load the library in the process that uses it (after fork, or "
    "after exec)";

/* Unblocked while Go runs on a caller's thread (see above). */
static sigset_t haext_go_needs;
/* The loading thread's mask, restored once the runtime has started. */
static sigset_t haext_load_mask;

static void haext_reason_free(void *p)
{
    if (p != haext_fork_reason) {
        free(p);
    }
}

/* Keeps reason (NULL: none) as the calling thread's last error. */
static void haext_keep_reason(char *reason)
{
    void *old;
    if (!haext_reason_key_ok) {
        haext_reason_free(reason);
        return;
    }
    old = pthread_getspecific(haext_reason_key);
    if (old == reason) {
        return;
    }
    if (pthread_setspecific(haext_reason_key, reason) != 0) {
        haext_reason_free(reason);
        return;
    }
    haext_reason_free(old);
}

static void haext_atfork_child(void)
{
    haext_forked = 1;
}


/* Runs before the Go runtime's own constructor in this library (a priority
 * constructor runs before those without one), which starts the runtime on
 * a thread that inherits the loading thread's mask. */
__attribute__((constructor(101))) static void haext_load_begin(void)
{
    sigset_t all;
    pthread_atfork(NULL, NULL, haext_atfork_child);
    haext_reason_key_ok = pthread_key_create(&haext_reason_key, haext_reason_free) == 0;
    sigemptyset(&haext_go_needs);
    sigaddset(&haext_go_needs, SIGILL);
    sigaddset(&haext_go_needs, SIGTRAP);
    sigaddset(&haext_go_needs, SIGBUS);
    sigaddset(&haext_go_needs, SIGFPE);
    sigaddset(&haext_go_needs, SIGSEGV);
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &haext_load_mask);
}

/* Runs after the Go runtime's constructor, which the Go linker puts first
 * among the unprioritized ones. */
__attribute__((constructor)) static void haext_load_end(void)
{
    pthread_sigmask(SIG_SETMASK, &haext_load_mask, NULL);
}

/* Every export that enters Go does so between these two. haext_enter
 * refuses a fork child (its reason kept, CKR_FUNCTION_FAILED returned by
 * the caller) and unblocks only what Go needs, saving the caller's mask;
 * haext_leave restores the mask and keeps the reason Go gave. */
static int haext_enter(sigset_t *saved)
{
    if (haext_forked) {
        haext_keep_reason(haext_fork_reason);
        return 0;
    }
    pthread_sigmask(SIG_UNBLOCK, &haext_go_needs, saved);
    return 1;
}

static CK_RV haext_leave(const sigset_t *saved, CK_RV rv, char *reason)
{
    pthread_sigmask(SIG_SETMASK, saved, NULL);
    haext_keep_reason(reason);
    return rv;
}

static CK_RV haext_status(CK_SLOT_ID slotId, void *pState, int layout)
{
    sigset_t saved;
    struct hx_head head, *h = NULL;
    char *reason = NULL;
    CK_RV rv;
    if (!haext_enter(&saved)) {
        return CKR_FUNCTION_FAILED;
    }
    /* The lanes of the members that answered last time start now, while
     * Go runs stages 1 and 2 (lanes.h); hx_head_end waits for them. */
    if (pState != NULL) {
        hx_head_start(&head, slotId);
        h = &head;
    }
    rv = haextState(slotId, pState, layout, h, &reason); /* before reason is read */
    if (h != NULL) {
        hx_head_end(h);
    }
    return haext_leave(&saved, rv, reason);
}

CK_RV CK_ENTRY CA_GetCurrentHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState)
{
    return haext_status(slotId, pState, HAEXT_LAYOUT_CLASSIC);
}

CK_RV CK_ENTRY CA_GetHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState)
{
    return haext_status(slotId, pState, HAEXT_LAYOUT_CLASSIC);
}

/* The SA6 / Luna 7 layout (cryptoki_ha.h maps the names above to these when
 * the application defines LIBHAEXT_HA_LAYOUT_SA6). */
CK_RV CK_ENTRY CA_GetCurrentHAState_SA6(CK_SLOT_ID slotId, void *pState)
{
    return haext_status(slotId, pState, HAEXT_LAYOUT_SA6);
}

CK_RV CK_ENTRY CA_GetHAState_SA6(CK_SLOT_ID slotId, void *pState)
{
    return haext_status(slotId, pState, HAEXT_LAYOUT_SA6);
}

CK_ULONG CK_ENTRY CA_GetHAExtLastError(char *buf, CK_ULONG size)
{
    const char *reason = haext_reason_key_ok ? pthread_getspecific(haext_reason_key) : NULL;
    size_t n;
    if (!reason) {
        reason = "";
    }
    n = strlen(reason);
    if (buf && size > 0) {
        size_t k = n < size - 1 ? n : (size_t)(size - 1);
        memcpy(buf, reason, k);
        buf[k] = 0;
    }
    return (CK_ULONG)n;
}

/* A front module (libhaext-pkcs11.so) that loaded this library hands it
 * the host's instance and its events (hostapi.h). Not in cryptoki_ha.h:
 * only the front calls it. */
CK_RV CK_ENTRY CA_HAExtAttachFront(const struct haext_front *front)
{
    sigset_t saved;
    char *reason = NULL;
    CK_RV rv;
    if (!haext_enter(&saved)) {
        return CKR_FUNCTION_FAILED;
    }
    rv = haextAttachFront((struct haext_front *)front, &reason); /* before reason is read */
    return haext_leave(&saved, rv, reason);
}

CK_RV CK_ENTRY CA_SetHAExtFunctionList(CK_FUNCTION_LIST_PTR pFunctionList)
{
    sigset_t saved;
    char *reason = NULL;
    CK_RV rv;
    if (!haext_enter(&saved)) {
        return CKR_FUNCTION_FAILED;
    }
    rv = haextSetFunctionList(pFunctionList, &reason); /* before reason is read */
    return haext_leave(&saved, rv, reason);
}

/* The state-change callbacks (callback.c, callback.go). */
CK_RV CK_ENTRY CA_HAExtSetStateCallback(CK_SLOT_ID slotId, CK_HA_STATE_CALLBACK fn, CK_ULONG intervalMs, void *ctx)
{
    sigset_t saved;
    char *reason = NULL;
    CK_RV rv;
    if (!haext_enter(&saved)) {
        return CKR_FUNCTION_FAILED;
    }
    rv = haext_set_callback(slotId, fn, intervalMs, ctx, &reason); /* before reason is read */
    return haext_leave(&saved, rv, reason);
}
