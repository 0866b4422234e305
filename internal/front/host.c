/*
 * host.c - the host's C_Initialize, C_Finalize and C_GetSlotList: the
 * module's lifecycle as the front follows it (the gate, the events, the
 * tables), each forwarded to the vendor on the host's thread.
 */
#include <string.h>

#include "state.h"

/* CKF_LIBRARY_CANT_CREATE_OS_THREADS. A host that passes it to C_Initialize
 * says that the library may not create threads from its calls. The front
 * itself creates none: it forwards the flag, and the host's calls run as
 * they would without it. But libhaext's status engine needs threads of its
 * own (one per member, the Go runtime's), so while the host's C_Initialize
 * carried the flag the front refuses status calls (ca.c:
 * CKR_FUNCTION_FAILED, with the reason) and does not even load the engine:
 * no thread of libhaext's exists then unless an earlier status call started
 * the engine. The alternative, CKR_NEED_TO_CREATE_THREADS from
 * C_Initialize, would break a host that works with the vendor alone. */
static atomic_int no_threads;

int front_host_threads_forbidden(void)
{
    return atomic_load(&no_threads);
}

/* Set while this thread is inside the vendor's C_Initialize: a vendor that
 * initializes the front in turn (p11-kit-proxy with the front among its
 * modules) gets CKR_GENERAL_ERROR instead of a loop. */
static __thread int initializing __attribute__((tls_model("initial-exec")));

/* The arguments the vendor gets: the host's, with CKF_OS_LOCKING_OK added
 * when the host asked for no locking at all (NULL, or no mutex callbacks
 * and no flag). A host that initializes with NULL promises not to call
 * from two threads at once, and a vendor may then skip its own locks
 * (SoftHSM2 does); but libhaext's probe threads call too. More locking
 * changes nothing the host sees. */
static CK_VOID_PTR locking_args(CK_VOID_PTR args, CK_C_INITIALIZE_ARGS *local)
{
    CK_C_INITIALIZE_ARGS *in = args;
    if (in != NULL && (in->CreateMutex != NULL || in->DestroyMutex != NULL || in->LockMutex != NULL ||
                       in->UnlockMutex != NULL || (in->flags & CKF_OS_LOCKING_OK)))
        return args;
    if (in != NULL)
        *local = *in;
    else
        memset(local, 0, sizeof *local);
    local->flags |= CKF_OS_LOCKING_OK;
    return local;
}

/* The vendor answered the host's C_Initialize with rv, CKR_OK or
 * CKR_CRYPTOKI_ALREADY_INITIALIZED: the threads flag, then the gate. */
static void initialized(CK_VOID_PTR args, CK_RV rv)
{
    int forbid = args != NULL && (((CK_C_INITIALIZE_ARGS *)args)->flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS);
    if (rv == CKR_OK)
        atomic_store(&no_threads, forbid);
    else if (forbid)
        atomic_store(&no_threads, 1); /* the stricter word holds */
    if (!front_gate_open())
        front_events_push(HAEXT_EV_INITIALIZED, HAEXT_SLOT_NONE, rv);
}

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
    CK_FUNCTION_LIST_PTR v;
    CK_C_INITIALIZE_ARGS local;
    CK_VOID_PTR a;
    CK_RV rv;
    if (initializing || front_setup_load() != 0)
        return CKR_GENERAL_ERROR;
    v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    a = locking_args(pInitArgs, &local);
    initializing = 1;
    rv = v->C_Initialize(a);
    if (rv == CKR_CANT_LOCK && a != pInitArgs)
        rv = v->C_Initialize(pInitArgs); /* the vendor cannot lock: the host's own arguments */
    initializing = 0;
    if (rv == CKR_OK)
        front_slotlist_forget(); /* a new instance: its slots may differ */
    if (rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED)
        initialized(pInitArgs, rv);
    else if (haext_rv_connection(rv))
        front_events_push(HAEXT_EV_HOST_ERROR, HAEXT_SLOT_NONE, rv);
    return rv;
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    CK_RV rv;
    int was;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    /* Close the gate and let libhaext's calls inside it finish. */
    was = front_gate_close(FRONT_WAIT_MS);

    rv = v->C_Finalize(pReserved);

    if (rv != CKR_OK && rv != CKR_CRYPTOKI_NOT_INITIALIZED) {
        front_gate_restore(was); /* still initialized */
        return rv;
    }
    front_slotlist_forget();
    /* Every session is gone with the module's state. */
    front_table_forget_all();
    front_own_forget_all();
    front_haslot_finalized();
    if (rv == CKR_OK)
        front_events_push(HAEXT_EV_FINALIZED, HAEXT_SLOT_NONE, rv);
    return rv;
}

/* The vendor's slots and the HA slots after them (only these under
 * HAOnly): nha of them in ha. */
static CK_RV with_ha(CK_FUNCTION_LIST_PTR v, CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count,
                     const CK_SLOT_ID *ha, int nha, int only)
{
    CK_SLOT_ID mine[FRONT_MAX_SLOTS];
    CK_ULONG n = FRONT_MAX_SLOTS, total;
    CK_RV rv = v->C_GetSlotList(present, mine, &n);
    if (rv == CKR_BUFFER_TOO_SMALL)
        rv = CKR_GENERAL_ERROR; /* more slots than the front keeps */
    if (rv != CKR_OK)
        return rv;
    front_slotlist_remember(mine, n);
    if (only)
        n = 0;
    total = n + (CK_ULONG)nha;
    if (list != NULL && *count < total) {
        *count = total;
        return CKR_BUFFER_TOO_SMALL;
    }
    if (list != NULL) {
        memcpy(list, mine, n * sizeof *mine);
        memcpy(list + n, ha, (size_t)nha * sizeof *ha);
    }
    *count = total;
    return CKR_OK;
}

CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    CK_SLOT_ID ha[FRONT_HA_MAX_GROUPS];
    int only = 0, nha;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    nha = front_haslot_ids(ha, &only);
    if (nha > 0 && pulCount == NULL)
        return CKR_ARGUMENTS_BAD;
    if (nha > 0) {
        rv = with_ha(v, tokenPresent, pSlotList, pulCount, ha, nha, only);
        if (haext_rv_connection(rv))
            front_events_push(HAEXT_EV_HOST_ERROR, HAEXT_SLOT_NONE, rv);
        return rv;
    }
    rv = v->C_GetSlotList(tokenPresent, pSlotList, pulCount);
    if (rv == CKR_OK && pSlotList != NULL)
        front_slotlist_remember(pSlotList, *pulCount);
    else if (haext_rv_connection(rv))
        front_events_push(HAEXT_EV_HOST_ERROR, HAEXT_SLOT_NONE, rv);
    return rv;
}
