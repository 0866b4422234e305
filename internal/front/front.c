/*
 * front.c - the PKCS#11 2.40 functions of libhaext-pkcs11.so: plain C
 * trampolines through the vendor's CK_FUNCTION_LIST.
 *
 * A call that takes a session marks its thread busy on the host's session
 * for its duration (state.h: two plain stores, no lookup). A
 * call that fails with a connection-class CK_RV is recorded for the engine.
 * Everything else is a jump to the vendor. The calls with side effects on
 * the front's tables (C_Initialize, C_Finalize, C_OpenSession,
 * C_CloseSession, C_CloseAllSessions, C_Login, C_InitToken) have their slow
 * paths in state.c. cmd/libhaext-pkcs11/exports.map exports every function
 * defined here by name, for hosts that dlsym them. The 3.0 interface is in
 * iface.c.
 */
#include "state.h"

#define UNLIKELY(x) HAEXT_UNLIKELY(x)

/* Functions whose first argument is a session: (name, parameters, arguments). */
#define HAEXT_SESSION_FUNCTIONS(X) \
    X(C_GetSessionInfo, (CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo), (hSession, pInfo)) \
    X(C_GetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pState, CK_ULONG_PTR pulLen), \
      (hSession, pState, pulLen)) \
    X(C_SetOperationState, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pState, CK_ULONG ulLen, \
      CK_OBJECT_HANDLE hEncKey, CK_OBJECT_HANDLE hAuthKey), (hSession, pState, ulLen, hEncKey, hAuthKey)) \
    X(C_InitPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen), (hSession, pPin, ulPinLen)) \
    X(C_SetPIN, (CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOld, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNew, \
      CK_ULONG ulNewLen), (hSession, pOld, ulOldLen, pNew, ulNewLen)) \
    X(C_Logout, (CK_SESSION_HANDLE hSession), (hSession)) \
    X(C_CreateObject, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, \
      CK_OBJECT_HANDLE_PTR phObject), (hSession, pTemplate, ulCount, phObject)) \
    X(C_CopyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, \
      CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject), (hSession, hObject, pTemplate, ulCount, phNewObject)) \
    X(C_DestroyObject, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject), (hSession, hObject)) \
    X(C_GetObjectSize, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize), \
      (hSession, hObject, pulSize)) \
    X(C_GetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, \
      CK_ULONG ulCount), (hSession, hObject, pTemplate, ulCount)) \
    X(C_SetAttributeValue, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, \
      CK_ULONG ulCount), (hSession, hObject, pTemplate, ulCount)) \
    X(C_FindObjectsInit, (CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount), \
      (hSession, pTemplate, ulCount)) \
    X(C_FindObjects, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMax, \
      CK_ULONG_PTR pulCount), (hSession, phObject, ulMax, pulCount)) \
    X(C_FindObjectsFinal, (CK_SESSION_HANDLE hSession), (hSession)) \
    X(C_EncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_Encrypt, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_EncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_EncryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut), \
      (hSession, pOut, pulOut)) \
    X(C_DecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_Decrypt, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_DecryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_DecryptFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut), \
      (hSession, pOut, pulOut)) \
    X(C_DigestInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech), (hSession, pMech)) \
    X(C_Digest, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_DigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn), (hSession, pIn, ulIn)) \
    X(C_DigestKey, (CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey), (hSession, hKey)) \
    X(C_DigestFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut), \
      (hSession, pOut, pulOut)) \
    X(C_SignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_Sign, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_SignUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn), (hSession, pIn, ulIn)) \
    X(C_SignFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut), \
      (hSession, pOut, pulOut)) \
    X(C_SignRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_SignRecover, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_VerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_Verify, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pSig, \
      CK_ULONG ulSig), (hSession, pIn, ulIn, pSig, ulSig)) \
    X(C_VerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn), (hSession, pIn, ulIn)) \
    X(C_VerifyFinal, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSig, CK_ULONG ulSig), (hSession, pSig, ulSig)) \
    X(C_VerifyRecoverInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_VerifyRecover, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSig, CK_ULONG ulSig, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pSig, ulSig, pOut, pulOut)) \
    X(C_DigestEncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_DecryptDigestUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_SignEncryptUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_DecryptVerifyUpdate, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
      CK_ULONG_PTR pulOut), (hSession, pIn, ulIn, pOut, pulOut)) \
    X(C_GenerateKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_ATTRIBUTE_PTR pTemplate, \
      CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey), (hSession, pMech, pTemplate, ulCount, phKey)) \
    X(C_GenerateKeyPair, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_ATTRIBUTE_PTR pPubTemplate, \
      CK_ULONG ulPubCount, CK_ATTRIBUTE_PTR pPrivTemplate, CK_ULONG ulPrivCount, CK_OBJECT_HANDLE_PTR phPub, \
      CK_OBJECT_HANDLE_PTR phPriv), \
      (hSession, pMech, pPubTemplate, ulPubCount, pPrivTemplate, ulPrivCount, phPub, phPriv)) \
    X(C_WrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hWrappingKey, \
      CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut), \
      (hSession, pMech, hWrappingKey, hKey, pOut, pulOut)) \
    X(C_UnwrapKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hUnwrappingKey, \
      CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey), \
      (hSession, pMech, hUnwrappingKey, pIn, ulIn, pTemplate, ulCount, phKey)) \
    X(C_DeriveKey, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hBaseKey, \
      CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey), \
      (hSession, pMech, hBaseKey, pTemplate, ulCount, phKey)) \
    X(C_SeedRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen), \
      (hSession, pSeed, ulSeedLen)) \
    X(C_GenerateRandom, (CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOut, CK_ULONG ulLen), (hSession, pOut, ulLen)) \
    X(C_GetFunctionStatus, (CK_SESSION_HANDLE hSession), (hSession)) \
    X(C_CancelFunction, (CK_SESSION_HANDLE hSession), (hSession))

/* Functions whose first argument is a slot. */
#define HAEXT_SLOT_FUNCTIONS(X) \
    X(C_GetSlotInfo, (CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo), (slotID, pInfo)) \
    X(C_GetTokenInfo, (CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo), (slotID, pInfo)) \
    X(C_GetMechanismList, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pList, CK_ULONG_PTR pulCount), \
      (slotID, pList, pulCount)) \
    X(C_GetMechanismInfo, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo), \
      (slotID, type, pInfo))

/* Functions that name neither. */
#define HAEXT_OTHER_FUNCTIONS(X) \
    X(C_GetInfo, (CK_INFO_PTR pInfo), (pInfo)) \
    X(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved), (flags, pSlot, pReserved))

/* The vendor's function, or NOT_INITIALIZED when the host calls before
 * C_GetFunctionList/C_Initialize (as the vendor would answer), and
 * NOT_SUPPORTED for a NULL entry (state.h). */
#define VENDOR_OR_RETURN(f, name) HAEXT_VENDOR_OR_RETURN(haext_vcopy, f, name)

#define SESSION_TRAMPOLINE(name, params, args) HAEXT_SESSION_TRAMPOLINE(haext_vcopy, name, params, args)

#define SLOT_TRAMPOLINE(name, params, args) \
    CK_RV name params \
    { \
        VENDOR_OR_RETURN(f, name); \
        CK_RV rv = f args; \
        if (UNLIKELY(haext_rv_connection(rv))) \
            haext_slot_failed(slotID, rv); \
        return rv; \
    }

#define OTHER_TRAMPOLINE(name, params, args) \
    CK_RV name params \
    { \
        VENDOR_OR_RETURN(f, name); \
        CK_RV rv = f args; \
        if (UNLIKELY(haext_rv_connection(rv))) \
            haext_slot_failed(HAEXT_SLOT_NONE, rv); \
        return rv; \
    }

HAEXT_SESSION_FUNCTIONS(SESSION_TRAMPOLINE)
HAEXT_SLOT_FUNCTIONS(SLOT_TRAMPOLINE)
HAEXT_OTHER_FUNCTIONS(OTHER_TRAMPOLINE)

/* The calls with side effects on the front's state. */

CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pList, CK_ULONG_PTR pulCount)
{
    return haext_host_slot_list(tokenPresent, pList, pulCount);
}

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
    return haext_host_initialize(pInitArgs);
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
    return haext_host_finalize(pReserved);
}

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                    CK_SESSION_HANDLE_PTR phSession)
{
    return haext_host_open(slotID, flags, pApplication, Notify, phSession);
}

CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
    return haext_host_close(hSession);
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
    return haext_host_close_all(slotID);
}

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    return haext_host_login(hSession, userType, pPin, ulPinLen);
}

CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
    return haext_host_init_token(slotID, pPin, ulPinLen, pLabel);
}

#define LIST_ENTRY(name, params, args) .name = name,

/* The front's list: every entry a function of this file. Its version is
 * the one it implements, 2.40, whatever the vendor's (a 3.0 host reads a
 * 3.0 list past the end of this one): the 3.0 list is iface.c's, offered
 * through C_GetInterface. */
CK_FUNCTION_LIST haext_front_list = {
    .version = {2, 40},
    .C_Initialize = C_Initialize,
    .C_Finalize = C_Finalize,
    .C_GetFunctionList = C_GetFunctionList,
    .C_OpenSession = C_OpenSession,
    .C_CloseSession = C_CloseSession,
    .C_CloseAllSessions = C_CloseAllSessions,
    .C_Login = C_Login,
    .C_InitToken = C_InitToken,
    .C_GetSlotList = C_GetSlotList,
    HAEXT_SESSION_FUNCTIONS(LIST_ENTRY)
    HAEXT_SLOT_FUNCTIONS(LIST_ENTRY)
    HAEXT_OTHER_FUNCTIONS(LIST_ENTRY)
};

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (ppFunctionList == NULL)
        return CKR_ARGUMENTS_BAD;
    if (haext_front_load() != 0)
        return CKR_GENERAL_ERROR;
    *ppFunctionList = &haext_front_list;
    return CKR_OK;
}
