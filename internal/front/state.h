/*
 * state.h - the front's tables, private to internal/front: what the
 * trampolines (front.c) need inline on every call, and the slow paths in
 * state.c.
 *
 * The table of the host's sessions maps a handle to its slot and a busy
 * count. A host call that takes a session finds its entry without a lock
 * (a chain of atomic pointers under a fixed array of buckets) and adds one
 * to busy around the vendor call: two uncontended atomic additions on a
 * cache line of that session's own. Entries are never freed, only reused,
 * so a pointer found by a lookup stays valid memory whatever happens next.
 * Everything else (opening, closing, lending) takes a mutex, never held
 * across a vendor call.
 */
#ifndef HAEXT_FRONT_STATE_H
#define HAEXT_FRONT_STATE_H

#include <stdatomic.h>

#include "front.h"

#define HAEXT_BUCKETS 4096 /* power of two */

struct haext_slot;

/* One session of the host's. h is the key; slot and the list links change
 * only under the table mutex; busy, lent and closing are atomics. */
struct haext_sess {
    _Atomic CK_SESSION_HANDLE h;
    _Atomic(struct haext_sess *) next; /* bucket chain */
    atomic_long busy;                  /* host calls in flight on it */
    atomic_int lent;                   /* lent to libhaext right now */
    atomic_int closing;                /* the host is closing it: lend no more */
    struct haext_slot *slot;
    struct haext_sess *snext, *sprev;  /* the slot's list (table mutex) */
    struct haext_sess *fnext;          /* free or zombie list (table mutex) */
    int linked;                        /* in the table (table mutex) */
} __attribute__((aligned(64)));

extern _Atomic(struct haext_sess *) haext_buckets[HAEXT_BUCKETS];

/* The vendor's function list once loaded (vendor.c); NULL before. */
extern CK_FUNCTION_LIST_PTR _Atomic haext_vendor;

static inline unsigned haext_bucket(CK_SESSION_HANDLE h)
{
    unsigned long long x = (unsigned long long)h * 0x9E3779B97F4A7C15ULL;
    return (unsigned)(x >> 52); /* 64 - log2(HAEXT_BUCKETS) */
}

/* The host's session h, or NULL when the front does not know it. */
static inline struct haext_sess *haext_sess_find(CK_SESSION_HANDLE h)
{
    struct haext_sess *e;
    if (h == CK_INVALID_HANDLE)
        return NULL;
    e = atomic_load_explicit(&haext_buckets[haext_bucket(h)], memory_order_acquire);
    while (e != NULL) {
        if (atomic_load_explicit(&e->h, memory_order_relaxed) == h)
            return e;
        e = atomic_load_explicit(&e->next, memory_order_acquire);
    }
    return NULL;
}

/* Around every forwarded call that takes a session. */
static inline struct haext_sess *haext_sess_enter(CK_SESSION_HANDLE h)
{
    struct haext_sess *e = haext_sess_find(h);
    if (e != NULL)
        atomic_fetch_add_explicit(&e->busy, 1, memory_order_relaxed);
    return e;
}

static inline void haext_sess_leave(struct haext_sess *e)
{
    if (e != NULL)
        atomic_fetch_sub_explicit(&e->busy, 1, memory_order_release);
}

/* Connection-class CK_RVs: the member behind the slot may be gone. */
static inline int haext_rv_connection(CK_RV rv)
{
    return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT;
}

static inline int haext_rv_dropped(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

/* A host call on session h (its entry e, or NULL) failed with rv: record
 * the host error, and forget a session the module dropped. */
void haext_sess_failed(struct haext_sess *e, CK_SESSION_HANDLE h, CK_RV rv);
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
CK_RV haext_host_init_token(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG len, CK_UTF8CHAR_PTR label);

/* Initializes the locks and installs the fork handler (once). */
void haext_state_init(void);
/* Fills in the hooks of struct haext_host. */
void haext_state_hooks(struct haext_host *h);
/* vendor.c's part of the fork child handler. */
void haext_vendor_atfork_child(void);

#endif
