/*
 * state.h - what the trampolines (front.c, iface.c, session.c) need inline
 * on every call: the busy marker and the trampoline macros.
 *
 * The table of the host's sessions (table.c) maps a handle to its slot; it
 * is read and written under a lock, and never on the path of an ordinary
 * call. That path only marks the calling thread busy on its session for
 * the duration of the vendor call: each host thread has a record of its
 * own (busy.c: thread-local, registered on its first call) holding the
 * handle of the session it is in a call on, so the hot path has no lookup,
 * no atomic read-modify-write and no lock. A session is busy while some
 * thread's record names it; borrow reads the records.
 *
 * Lending is a handshake (Dekker's), so that no host call can start on a
 * session while it is lent. The host's thread publishes its session in its
 * record, then reads the loan count of the session's bucket
 * (front_loans_buckets); borrow publishes the loan (the count), then reads
 * the records. All four accesses are sequentially consistent, so at least
 * one side sees the other: a borrow that finds the session in a record
 * takes its loan back and tries another session (a probe thread never
 * waits for the host), and a host call that finds a loan in its bucket
 * waits, in front_loans_wait_host, until that session is given back (it waits
 * for libhaext's one short call, as a vendor that serializes the calls on a
 * session would make it). On the hot path this costs one sequentially
 * consistent store and one load of a line only loans write.
 */
#ifndef HAEXT_FRONT_STATE_H
#define HAEXT_FRONT_STATE_H

#include "ckr.h" /* haext_rv_connection, haext_rv_dropped */
#include "front.h"
#include "ha.h"


/* Around every forwarded call that takes a session: the calling thread
 * marks itself in a call on session h and returns what it was in before
 * (CK_INVALID_HANDLE, or the session of a call made from inside a call,
 * e.g. a notify callback), which front_busy_end restores. A call made from
 * inside a call marks the thread FRONT_BUSY_ALL, which still covers the
 * outer call's session. borrow passes over a session a host thread is
 * marked in, and the host's call waits for a loan of h already out. */
static inline CK_SESSION_HANDLE front_busy_begin(CK_SESSION_HANDLE h)
{
    CK_SESSION_HANDLE prev;
    if (FRONT_UNLIKELY(!front_busy_self.registered))
        front_busy_register();
    prev = atomic_load_explicit(&front_busy_self.cur, memory_order_relaxed);
    /* The handshake's host half: publish h, then look for a loan. */
    atomic_store_explicit(&front_busy_self.cur, prev == CK_INVALID_HANDLE ? h : FRONT_BUSY_ALL,
                          memory_order_seq_cst);
    if (FRONT_UNLIKELY(atomic_load_explicit(&front_loans_buckets[front_loans_bucket(h)], memory_order_seq_cst) != 0))
        front_loans_wait_host(h, prev);
    return prev;
}

static inline void front_busy_end(CK_SESSION_HANDLE prev)
{
    atomic_store_explicit(&front_busy_self.cur, prev, memory_order_release);
}

/* Declares f, the vendor's function name from the copy (front_vendor_copy
 * or front_vendor_copy3); returns front_vendor_missing() when that entry is
 * NULL: CKR_CRYPTOKI_NOT_INITIALIZED when the host calls before
 * C_GetFunctionList/C_Initialize (as the vendor would answer), else
 * CKR_FUNCTION_NOT_SUPPORTED. */
#define FRONT_VENDOR_OR_RETURN(copy, f, name) \
    CK_##name f = __atomic_load_n(&(copy).name, __ATOMIC_ACQUIRE); \
    if (FRONT_UNLIKELY(f == NULL)) \
        return front_vendor_missing()

/* A trampoline for a function whose first argument is the session
 * hSession: the calling thread is marked busy on it for the vendor call,
 * and a failure is recorded (front_session_failed). */
#define FRONT_SESSION_TRAMPOLINE(copy, name, params, args) FRONT_SESSION_TRAMPOLINE_HA(copy, name, params, args, \
                                                                                   front_ha_##name args)

/* The same, where an HA session's call goes to ha_call (ha.h): one compare
 * of the handle's top bits on every call. The HA branch is a function of
 * its own (ha_<name>), and the SIGPIPE guard another (guarded_<name>), so
 * that the trampoline stays small and ha_<name> has no frame: the guard's
 * signal sets would be one on every call. */
#define FRONT_SESSION_TRAMPOLINE_HA(copy, name, params, args, ha_call) \
    static __attribute__((noinline)) CK_RV guarded_##name params \
    { \
        struct hx_guard g_; \
        CK_RV rv; \
        hx_guard_begin(&g_); \
        rv = ha_call; \
        hx_guard_end(&g_); \
        return rv; \
    } \
    static __attribute__((noinline)) CK_RV ha_##name params \
    { \
        if (atomic_load_explicit(&front_hamember_sockets, memory_order_relaxed)) \
            return guarded_##name args; \
        return ha_call; \
    } \
    CK_RV name params \
    { \
        if (FRONT_UNLIKELY(FRONT_HA_TAGGED(hSession)) && front_haslot_session(hSession) != NULL) \
            return ha_##name args; \
        FRONT_VENDOR_OR_RETURN(copy, f, name); \
        CK_SESSION_HANDLE prev = front_busy_begin(hSession); \
        CK_RV rv = f args; \
        front_busy_end(prev); \
        if (FRONT_UNLIKELY(rv != CKR_OK)) \
            front_session_failed(hSession, rv); \
        return rv; \
    }

#endif
