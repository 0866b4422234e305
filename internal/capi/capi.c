/*
 * capi.c - the CA_* entry points of include/cryptoki_ha.h. Each one is a C
 * function that calls the Go side (capi.go); the linker version script of
 * each library exports these and nothing of Go's.
 */
#include "_cgo_export.h"

CK_RV CK_ENTRY CA_GetCurrentHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState)
{
    return haextState(slotId, pState);
}

CK_RV CK_ENTRY CA_GetHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState)
{
    return haextState(slotId, pState);
}

CK_ULONG CK_ENTRY CA_GetHAExtLastError(char *buf, CK_ULONG size)
{
    return haextLastError(buf, size);
}

CK_RV CK_ENTRY CA_SetHAExtFunctionList(CK_FUNCTION_LIST_PTR pFunctionList)
{
    return haextSetFunctionList(pFunctionList);
}
