/*
 * functions.h - the PKCS#11 2.40 functions by what their first argument
 * is, as X-macros X(name, parameters, arguments): front.c defines a
 * trampoline for each, and front.c's and iface.c's lists name them all.
 */
#ifndef HAEXT_FRONT_FUNCTIONS_H
#define HAEXT_FRONT_FUNCTIONS_H

/* Functions whose first argument is a session: (name, parameters, arguments). */
#define FRONT_SESSION_FUNCTIONS(X) \
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
#define FRONT_SLOT_FUNCTIONS(X) \
    X(C_GetSlotInfo, (CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo), (slotID, pInfo)) \
    X(C_GetTokenInfo, (CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo), (slotID, pInfo)) \
    X(C_GetMechanismList, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pList, CK_ULONG_PTR pulCount), \
      (slotID, pList, pulCount)) \
    X(C_GetMechanismInfo, (CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo), \
      (slotID, type, pInfo))

/* Functions that name neither. */
#define FRONT_OTHER_FUNCTIONS(X) \
    X(C_GetInfo, (CK_INFO_PTR pInfo), (pInfo)) \
    X(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pReserved), (flags, pSlot, pReserved))

/* The functions with side effects on the front's tables (host.c,
 * session.c) and C_GetFunctionList (front.c). */
#define FRONT_TABLE_FUNCTIONS(X) \
    X(C_Initialize, , ) \
    X(C_Finalize, , ) \
    X(C_GetFunctionList, , ) \
    X(C_OpenSession, , ) \
    X(C_CloseSession, , ) \
    X(C_CloseAllSessions, , ) \
    X(C_Login, , ) \
    X(C_InitToken, , ) \
    X(C_GetSlotList, , )

#define FRONT_LIST_ENTRY(name, params, args) .name = name,

/* Every 2.40 entry of a list of the front's, as designated initializers:
 * each is a function of the front's. */
#define FRONT_ENTRIES_240 \
    FRONT_TABLE_FUNCTIONS(FRONT_LIST_ENTRY) \
    FRONT_SESSION_FUNCTIONS(FRONT_LIST_ENTRY) \
    FRONT_SLOT_FUNCTIONS(FRONT_LIST_ENTRY) \
    FRONT_OTHER_FUNCTIONS(FRONT_LIST_ENTRY)

#endif
