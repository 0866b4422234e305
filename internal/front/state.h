/*
 * state.h - the front's tables, private to internal/front: what the
 * trampolines (front.c) need inline on every call, and the slow paths in
 * state.c.
 *
 * The table of the host's sessions maps a handle to its slot; it is
 * read and written under a mutex, and never on the path of an ordinary
 * call. That path only marks the calling thread busy on its session for
 * the duration of the vendor call: each host thread has a record of its
 * own (thread-local, registered on its first call) holding the handle of
 * the session it is in a call on, so the hot path has no lookup, no
 * atomic read-modify-write and no lock. A session is busy while some
 * thread's record names it; borrow reads the records. Everything else
 * (opening, closing, lending) takes a mutex, never held across a vendor
 * call.
 *
 * Lending is a handshake (Dekker's), so that no host call can start on a
 * session while it is lent. The host's thread publishes its session in its
 * record, then reads the loan count of the session's bucket
 * (haext_lent); borrow publishes the loan (the count), then reads the
 * records. All four accesses are sequentially consistent, so at least one
 * side sees the other: a borrow that finds the session in a record takes
 * its loan back and tries another session (a lane never waits for the
 * host), and a host call that finds a loan in its bucket waits, in
 * haext_busy_wait, until that session is given back (it waits for
 * libhaext's one short call, as a vendor that serializes the calls on a
 * session would make it). On the hot path this costs one sequentially
 * consistent store and one load of a line only loans write.
 */
#ifndef HAEXT_FRONT_STATE_H
#define HAEXT_FRONT_STATE_H

#include <stdatomic.h>

#include "ckr.h" /* haext_rv_connection, haext_rv_dropped */
#include "front.h"
#include "pkcs11v3.h"

/* Hidden: the trampolines reach them without a GOT load. */
#define HAEXT_HIDDEN __attribute__((visibility("hidden")))

/* The vendor's function list once loaded (vendor.c); NULL before. */
extern CK_FUNCTION_LIST_PTR _Atomic haext_vendor HAEXT_HIDDEN;
/* A copy of it, written before haext_vendor is set: the trampolines read
 * the function they forward to from here, one cache line of the front's. */
extern CK_FUNCTION_LIST haext_vcopy HAEXT_HIDDEN;
/* The vendor's 3.0 list (iface.c), copied when the host first asks for
 * the interfaces and the vendor offers 3.0; its 3.0 entries are NULL until
 * then. The 3.0 trampolines read the function they forward to from here. */
extern CK_FUNCTION_LIST_3_0 haext_vcopy3 HAEXT_HIDDEN;
/* What a trampoline answers when its entry in haext_vcopy is NULL: not
 * loaded yet (CKR_CRYPTOKI_NOT_INITIALIZED), or not supported. */
CK_RV haext_no_function(void);

#define HAEXT_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Declares f, the vendor's function name from the copy (haext_vcopy or
 * haext_vcopy3); returns haext_no_function() when that entry is NULL. */
#define HAEXT_VENDOR_OR_RETURN(copy, f, name) \
    CK_##name f = __atomic_load_n(&(copy).name, __ATOMIC_ACQUIRE); \
    if (HAEXT_UNLIKELY(f == NULL)) \
        return haext_no_function()

/* A trampoline for a function whose first argument is the session
 * hSession: the calling thread is marked busy on it for the vendor call,
 * and a failure is recorded (haext_sess_failed). */
#define HAEXT_SESSION_TRAMPOLINE(copy, name, params, args) \
    CK_RV name params \
    { \
        HAEXT_VENDOR_OR_RETURN(copy, f, name); \
        CK_SESSION_HANDLE prev = haext_busy_begin(hSession); \
        CK_RV rv = f args; \
        haext_busy_end(prev); \
        if (HAEXT_UNLIKELY(rv != CKR_OK)) \
            haext_sess_failed(hSession, rv); \
        return rv; \
    }

/* Each host thread's own: the session it is in a call on right now
 * (CK_INVALID_HANDLE when none, HAEXT_BUSY_ALL inside a call made from
 * inside a call), and whether borrow can see it (the registry holds its
 * address). A handle, not the front's table entry, so that the path of an
 * ordinary call looks nothing up. */
struct haext_tls {
    _Atomic CK_SESSION_HANDLE cur;
    int registered;
};

/* In a record: the thread is in a call made from inside another call
 * (e.g. from a vendor callback), on two sessions or more at once; borrow
 * lends none of the host's sessions while it is there. (A vendor session
 * with this very handle is merely never lent while in use.) */
#define HAEXT_BUSY_ALL (~(CK_SESSION_HANDLE)0)

extern __thread struct haext_tls haext_self __attribute__((tls_model("initial-exec"))) HAEXT_HIDDEN;
/* Registers the calling thread (its first call on a session). */
void haext_thread_register(void);

/* Host sessions lent right now, counted per bucket of their handle: the
 * host's half of the handshake reads only its session's bucket, a line
 * that only borrow and give_back write. */
#define HAEXT_LENT_BUCKETS 64 /* power of two */
extern atomic_uint haext_lent[HAEXT_LENT_BUCKETS] HAEXT_HIDDEN;

static inline unsigned haext_lent_bucket(CK_SESSION_HANDLE h)
{
    return (unsigned)(((unsigned long long)h * 0x9E3779B97F4A7C15ULL) >> 58); /* 64 - log2(64) */
}

/* The slow path of haext_busy_begin: a host session in h's bucket is lent.
 * Waits until h (if it is the one) is given back. */
void haext_busy_wait(CK_SESSION_HANDLE h, CK_SESSION_HANDLE prev) HAEXT_HIDDEN;

/* Around every forwarded call that takes a session: the calling thread
 * marks itself in a call on session h and returns what it was in before
 * (CK_INVALID_HANDLE, or the session of a call made from inside a call,
 * e.g. a notify callback), which haext_busy_end restores. A call made from
 * inside a call marks the thread HAEXT_BUSY_ALL, which still covers the
 * outer call's session. borrow() passes over a session a host thread is
 * marked in, and the host's call waits for a loan of h already out. */
static inline CK_SESSION_HANDLE haext_busy_begin(CK_SESSION_HANDLE h)
{
    CK_SESSION_HANDLE prev;
    if (__builtin_expect(!haext_self.registered, 0))
        haext_thread_register();
    prev = atomic_load_explicit(&haext_self.cur, memory_order_relaxed);
    /* The handshake's host half: publish h, then look for a loan. */
    atomic_store_explicit(&haext_self.cur, prev == CK_INVALID_HANDLE ? h : HAEXT_BUSY_ALL, memory_order_seq_cst);
    if (__builtin_expect(atomic_load_explicit(&haext_lent[haext_lent_bucket(h)], memory_order_seq_cst) != 0, 0))
        haext_busy_wait(h, prev);
    return prev;
}

static inline void haext_busy_end(CK_SESSION_HANDLE prev)
{
    atomic_store_explicit(&haext_self.cur, prev, memory_order_release);
}

/* A host call on session h failed with rv: record the host error, and
 * forget a session the module dropped. */
void haext_sess_failed(CK_SESSION_HANDLE h, CK_RV rv);
/* A host call on slot (or HAEXT_SLOT_NONE) failed with rv. */
void haext_slot_failed(CK_SLOT_ID slot, CK_RV rv);

/* The slow paths of the special host calls (state.c). */
CK_RV haext_host_initialize(CK_VOID_PTR args);
CK_RV haext_host_finalize(CK_VOID_PTR reserved);
CK_RV haext_host_open(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                      CK_SESSION_HANDLE_PTR ph);
CK_RV haext_host_close(CK_SESSION_HANDLE h);
CK_RV haext_host_close_all(CK_SLOT_ID slot);
CK_RV haext_host_login(CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len);
/* 3.0's C_LoginUser, through the vendor's login_user, as C_Login. */
CK_RV haext_host_login_user(CK_C_LoginUser login_user, CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                            CK_ULONG len, CK_UTF8CHAR_PTR name, CK_ULONG name_len);
CK_RV haext_host_init_token(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG len, CK_UTF8CHAR_PTR label);
CK_RV haext_host_slot_list(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count);

/* Initializes the locks and installs the fork handler (once). */
void haext_state_init(void);
/* Fills in the hooks of struct haext_host. */
void haext_state_hooks(struct haext_host *h);
/* vendor.c's part of the fork child handler. */
void haext_vendor_atfork_child(void);

/* The front's 3.0 list, and the 3.0 functions it exports (iface.c). */
extern CK_FUNCTION_LIST_3_0 haext_front_list3 HAEXT_HIDDEN;
CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount);
CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion, CK_INTERFACE_PTR_PTR ppInterface,
                     CK_FLAGS flags);
/* Asks the vendor once (vendor.c), after haext_front_load, which interfaces
 * it offers, and hands the answer to haext_iface_set. */
void haext_vendor_interfaces(void);
/* The vendor's 3.0 list (NULL: none) and the flags of its 3.0 and 2.40
 * interfaces (iface.c). */
void haext_iface_set(CK_FUNCTION_LIST_3_0 *vendor3, CK_FLAGS flags3, CK_FLAGS flags240);

#endif
