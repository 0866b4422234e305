/*
 * front.c - the PKCS#11 2.40 functions of libhaext-pkcs11.so: plain C
 * trampolines through the vendor's CK_FUNCTION_LIST, and the front's list.
 *
 * A call that takes a session marks its thread busy on the host's session
 * for its duration (state.h: two plain stores, no lookup). A call that
 * fails with a connection-class CK_RV is recorded for the engine (events.c).
 * Everything else is a jump to the vendor. The calls with side effects on
 * the front's tables are host.c's (C_Initialize, C_Finalize, C_GetSlotList)
 * and session.c's (C_OpenSession, C_CloseSession, C_CloseAllSessions,
 * C_Login, C_InitToken). cmd/libhaext-pkcs11/exports.map exports every
 * 2.40 function by name, for hosts that dlsym them. The 3.0 interface is
 * iface.c's.
 */
#include "functions.h"
#include "state.h"

#define SESSION_TRAMPOLINE(name, params, args) FRONT_SESSION_TRAMPOLINE(front_vendor_copy, name, params, args)

#define SLOT_TRAMPOLINE(name, params, args) \
    CK_RV name params \
    { \
        if (FRONT_UNLIKELY(slotID - FRONT_HA_SLOT_BASE < FRONT_HA_MAX_GROUPS) && front_haslot_get(slotID) != NULL) { \
            CK_RV ha_rv_; \
            FRONT_HA_GUARDED(ha_rv_, front_haslot_##name args); \
            return ha_rv_; \
        } \
        FRONT_VENDOR_OR_RETURN(front_vendor_copy, f, name); \
        CK_RV rv = f args; \
        if (FRONT_UNLIKELY(haext_rv_connection(rv))) \
            front_events_push(HAEXT_EV_HOST_ERROR, slotID, rv); \
        return rv; \
    }

#define OTHER_TRAMPOLINE(name, params, args) \
    CK_RV name params \
    { \
        FRONT_VENDOR_OR_RETURN(front_vendor_copy, f, name); \
        CK_RV rv = f args; \
        if (FRONT_UNLIKELY(haext_rv_connection(rv))) \
            front_events_push(HAEXT_EV_HOST_ERROR, HAEXT_SLOT_NONE, rv); \
        return rv; \
    }

FRONT_SESSION_FUNCTIONS(SESSION_TRAMPOLINE)
FRONT_SLOT_FUNCTIONS(SLOT_TRAMPOLINE)
FRONT_OTHER_FUNCTIONS(OTHER_TRAMPOLINE)

/* The front's list: every entry a function of the front's. Its version is
 * the one it implements, 2.40, whatever the vendor's (a 3.0 host reads a
 * 3.0 list past the end of this one): the 3.0 list is iface.c's, offered
 * through C_GetInterface. */
CK_FUNCTION_LIST front_function_list = {
    .version = {2, 40},
    FRONT_ENTRIES_240
};

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (ppFunctionList == NULL)
        return CKR_ARGUMENTS_BAD;
    if (front_setup_load() != 0)
        return CKR_GENERAL_ERROR;
    *ppFunctionList = &front_function_list;
    return CKR_OK;
}
