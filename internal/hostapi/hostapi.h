/*
 * hostapi.h - what a front module lends the probe engine.
 *
 * In front of the vendor module (libhaext-pkcs11.so), libhaext sees every
 * call the host makes. It then uses the host's own instance of the vendor
 * module, never one of its own, and makes its lightweight call over a
 * session the host holds and is not using at that moment. The front fills
 * in a struct haext_vendor, the host's instance of the vendor module lent
 * to libhaext: its function list, the gate, the loans and the host's slot
 * list; the engine's probe threads call through it (call.h).
 *
 * Beside the vendor module there is no front: the engine fills in `list`
 * only (its own instance, or the one a host handed it with
 * CA_SetHAExtFunctionList) and leaves the hooks NULL.
 *
 * Every hook is plain C, never blocks for long, and is safe to call from
 * any thread at any time, including while the host is inside C_Finalize.
 */
#ifndef HAEXT_HOSTAPI_H
#define HAEXT_HOSTAPI_H

#include <p11-kit/pkcs11.h>

struct haext_vendor {
    /* The vendor function list the host's calls go to. */
    CK_FUNCTION_LIST_PTR list;

    /* Opens the gate for one vendor call of libhaext's. Returns 1 when the
     * module is initialized and no C_Finalize has begun; every 1 must be
     * paired with one leave(). Returns 0 otherwise: make no vendor call
     * (the member is then CKR_HA_NO_INSTANCE). The front's C_Finalize
     * closes the gate, waits (bounded) for the calls inside it, then
     * forwards. NULL: always open. */
    int (*enter)(void);
    void (*leave)(void);

    /* Lends a session on slot for one call, made between enter and leave:
     * an idle session of the host's when there is one, else the front's
     * own read-only session on that slot, opened on demand. A host session
     * is libhaext's until it is given back: no host call starts on it
     * meanwhile (one that tries waits for the give_back), so make one
     * short call on it and give it back at once. Returns CKR_OK and
     * *session, or the CK_RV that stopped it (e.g. C_OpenSession's, or
     * CKR_FUNCTION_REJECTED: none can be lent right now); that CK_RV is
     * about the lending, never a member's verdict. NULL: the engine opens
     * its own sessions. */
    CK_RV (*borrow)(CK_SLOT_ID slot, CK_SESSION_HANDLE *session);
    /* Gives a lent session back with the CK_RV of the call made on it, so
     * that the front forgets a session the module dropped. */
    void (*give_back)(CK_SESSION_HANDLE session, CK_RV rv);

    /* The host's own last C_GetSlotList answer since its C_Initialize, in
     * C_GetSlotList's protocol (list NULL: the count; CKR_BUFFER_TOO_SMALL),
     * or CKR_FUNCTION_FAILED when the host has made none: the engine then
     * lists the slots itself. Some modules (p11-kit's proxy) make
     * C_GetSlotList a call to every member, so libhaext takes the host's
     * answer where there is one. NULL: always list. */
    CK_RV (*host_slots)(CK_SLOT_ID *list, CK_ULONG *count);
};

/* The slot of a host error that names no slot (C_GetSlotList,
 * C_WaitForSlotEvent, C_Initialize). */
#define HAEXT_SLOT_NONE (~(CK_SLOT_ID)0)

/* What a front module saw the host do, for the engine, in order. */
enum haext_front_event_kind {
    HAEXT_EV_INITIALIZED = 1, /* the host's C_Initialize: CKR_OK or ALREADY_INITIALIZED */
    HAEXT_EV_FINALIZED = 2,   /* the host's C_Finalize was forwarded and succeeded */
    HAEXT_EV_HOST_ERROR = 3,  /* a host call failed with a connection-class CK_RV */
    HAEXT_EV_OVERFLOW = 4     /* events were lost (queue full): re-read everything */
};

struct haext_front_event {
    int kind;
    CK_SLOT_ID slot; /* HAEXT_EV_HOST_ERROR: the slot, or HAEXT_SLOT_NONE */
    CK_RV rv;        /* HAEXT_EV_HOST_ERROR: the host call's CK_RV */
};

/* What a front module (libhaext-pkcs11.so, plain C) hands libhaext.so when
 * it loads it, on the host's first CA_* call: CA_HAExtAttachFront. The
 * engine then uses vendor (the host's own instance, its gate and sessions)
 * and applies the events before every status call and as they come. Every
 * pointer stays valid for the life of the process. */
#define HAEXT_FRONT_ABI 2
struct haext_front {
    int abi; /* HAEXT_FRONT_ABI */
    const struct haext_vendor *vendor;
    /* Blocks until an event is queued, without taking it. */
    int (*wait)(void);
    /* Takes the next event if one is queued: 1, else 0. */
    int (*poll)(struct haext_front_event *ev);
    /* How many events are queued (an overflow counts as one), kept by the
     * front with atomic stores: a status call reads it, and calls poll only
     * when it is not 0, so that it does not cross into C for nothing. */
    const int *pending;
};

#endif
