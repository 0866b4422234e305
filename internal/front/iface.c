/*
 * iface.c - the PKCS#11 3.0 interfaces of libhaext-pkcs11.so:
 * C_GetInterfaceList and C_GetInterface, and the front's 3.0 list.
 *
 * The front offers "PKCS 11" 2.40 (front.c's list, the one
 * C_GetFunctionList returns) always, and "PKCS 11" 3.0 only when the vendor
 * offers 3.0 through its own C_GetInterface: a CK_FUNCTION_LIST_3_0 whose
 * 2.40 entries are the front's and whose 3.0 entries are the trampolines
 * below, forwarding to the vendor's 3.0 list (front_vendor_copy3). The
 * vendor is asked on the host's first C_GetInterface or
 * C_GetInterfaceList (vendor.c), so a host that never asks sees the vendor
 * get no call it did not make. The 3.0 default, when offered, is 3.0.
 *
 * The 3.0 functions all take a session (C_SessionCancel, the message
 * functions): they mark the thread busy and record failures like front.c's
 * session trampolines. C_LoginUser takes C_Login's path (session.c), which
 * closes the front's own read-only session before an SO login. Only
 * C_GetInterfaceList and C_GetInterface are exported by name
 * (cmd/libhaext-pkcs11/exports.map).
 */
#include <string.h>

#include "functions.h"
#include "state.h"

/* The 3.0 functions whose first argument is a session, but C_LoginUser. */
#define FRONT_SESSION_FUNCTIONS_3_0(X) \
    X(C_SessionCancel, (CK_SESSION_HANDLE hSession, CK_FLAGS flags), (hSession, flags)) \
    X(C_MessageEncryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_EncryptMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, CK_BYTE_PTR pAD, \
      CK_ULONG ulADLen, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut), \
      (hSession, pParam, ulParamLen, pAD, ulADLen, pIn, ulIn, pOut, pulOut)) \
    X(C_EncryptMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, \
      CK_BYTE_PTR pAD, CK_ULONG ulADLen), (hSession, pParam, ulParamLen, pAD, ulADLen)) \
    X(C_EncryptMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, \
      CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut, CK_FLAGS flags), \
      (hSession, pParam, ulParamLen, pIn, ulIn, pOut, pulOut, flags)) \
    X(C_MessageEncryptFinal, (CK_SESSION_HANDLE hSession), (hSession)) \
    X(C_MessageDecryptInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_DecryptMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, CK_BYTE_PTR pAD, \
      CK_ULONG ulADLen, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut), \
      (hSession, pParam, ulParamLen, pAD, ulADLen, pIn, ulIn, pOut, pulOut)) \
    X(C_DecryptMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, \
      CK_BYTE_PTR pAD, CK_ULONG ulADLen), (hSession, pParam, ulParamLen, pAD, ulADLen)) \
    X(C_DecryptMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, \
      CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut, CK_FLAGS flags), \
      (hSession, pParam, ulParamLen, pIn, ulIn, pOut, pulOut, flags)) \
    X(C_MessageDecryptFinal, (CK_SESSION_HANDLE hSession), (hSession)) \
    X(C_MessageSignInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_SignMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, CK_BYTE_PTR pData, \
      CK_ULONG ulData, CK_BYTE_PTR pSig, CK_ULONG_PTR pulSig), (hSession, pParam, ulParamLen, pData, ulData, pSig, pulSig)) \
    X(C_SignMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen), \
      (hSession, pParam, ulParamLen)) \
    X(C_SignMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, CK_BYTE_PTR pData, \
      CK_ULONG ulData, CK_BYTE_PTR pSig, CK_ULONG_PTR pulSig), (hSession, pParam, ulParamLen, pData, ulData, pSig, pulSig)) \
    X(C_MessageSignFinal, (CK_SESSION_HANDLE hSession), (hSession)) \
    X(C_MessageVerifyInit, (CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey), \
      (hSession, pMech, hKey)) \
    X(C_VerifyMessage, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, CK_BYTE_PTR pData, \
      CK_ULONG ulData, CK_BYTE_PTR pSig, CK_ULONG ulSig), (hSession, pParam, ulParamLen, pData, ulData, pSig, ulSig)) \
    X(C_VerifyMessageBegin, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen), \
      (hSession, pParam, ulParamLen)) \
    X(C_VerifyMessageNext, (CK_SESSION_HANDLE hSession, CK_VOID_PTR pParam, CK_ULONG ulParamLen, CK_BYTE_PTR pData, \
      CK_ULONG ulData, CK_BYTE_PTR pSig, CK_ULONG ulSig), (hSession, pParam, ulParamLen, pData, ulData, pSig, ulSig)) \
    X(C_MessageVerifyFinal, (CK_SESSION_HANDLE hSession), (hSession))

/* Not exported (exports.map): reached through the 3.0 list only. */
#define DECLARE(name, params, args) CK_RV name params;
FRONT_SESSION_FUNCTIONS_3_0(DECLARE)
CK_RV C_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                  CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen);

/* An HA session answers none of them (the HA slot is 2.40's); it takes
 * the call's arguments, unused. */
static CK_RV ha_3_0(CK_SESSION_HANDLE h, ...)
{
    (void)h;
    return front_haslot_refuse(CKR_FUNCTION_NOT_SUPPORTED, "the PKCS#11 3.0 functions are not supported on an HA slot");
}
#define SESSION_TRAMPOLINE_3_0(name, params, args) \
    FRONT_SESSION_TRAMPOLINE_HA(front_vendor_copy3, name, params, args, ha_3_0 args)
FRONT_SESSION_FUNCTIONS_3_0(SESSION_TRAMPOLINE_3_0)

CK_RV C_LoginUser(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen,
                  CK_UTF8CHAR_PTR pUsername, CK_ULONG ulUsernameLen)
{
    FRONT_VENDOR_OR_RETURN(front_vendor_copy3, f, C_LoginUser);
    return front_session_login_user(f, hSession, userType, pPin, ulPinLen, pUsername, ulUsernameLen);
}

/* The front's 3.0 list: the 2.40 entries are the front's, as in
 * front_function_list. */
CK_FUNCTION_LIST_3_0 front_iface_list3 = {
    .version = {3, 0},
    FRONT_ENTRIES_240
    .C_GetInterfaceList = C_GetInterfaceList,
    .C_GetInterface = C_GetInterface,
    .C_LoginUser = C_LoginUser,
    FRONT_SESSION_FUNCTIONS_3_0(FRONT_LIST_ENTRY)
};

/* The interfaces, each with the flags the vendor's may have that the
 * front keeps (CKF_INTERFACE_FORK_SAFE): [0] without, [1] with. */
static CK_CHAR pkcs11_name[] = "PKCS 11";
static CK_INTERFACE iface240[2] = {{pkcs11_name, &front_function_list, 0},
                                   {pkcs11_name, &front_function_list, CKF_INTERFACE_FORK_SAFE}};
static CK_INTERFACE iface30[2] = {{pkcs11_name, &front_iface_list3, 0},
                                  {pkcs11_name, &front_iface_list3, CKF_INTERFACE_FORK_SAFE}};

/* The interfaces offered, the default (the highest) first; the vendor is
 * asked once (a vendor that asks the front in turn, from inside that very
 * call, gets 2.40 alone). */
static CK_ULONG offered(CK_INTERFACE_PTR out[2])
{
    static const struct front_vendor_ifaces asking;
    const struct front_vendor_ifaces *v = front_vendor_interfaces();
    CK_ULONG n = 0;
    if (v == NULL)
        v = &asking;
    if (v->has30)
        out[n++] = &iface30[(v->flags3 & CKF_INTERFACE_FORK_SAFE) != 0];
    out[n++] = &iface240[(v->flags240 & CKF_INTERFACE_FORK_SAFE) != 0];
    return n;
}

CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
    CK_INTERFACE_PTR list[2];
    CK_ULONG n, i;
    if (pulCount == NULL)
        return CKR_ARGUMENTS_BAD;
    if (front_setup_load() != 0)
        return CKR_GENERAL_ERROR;
    n = offered(list);
    if (pInterfacesList == NULL) {
        *pulCount = n;
        return CKR_OK;
    }
    if (*pulCount < n) {
        *pulCount = n;
        return CKR_BUFFER_TOO_SMALL;
    }
    for (i = 0; i < n; i++)
        pInterfacesList[i] = *list[i];
    *pulCount = n;
    return CKR_OK;
}

/* PKCS#11 3.0, 5.4: a name, a version and flags given must match (all the
 * flags asked for must be the interface's); without them, the default. An
 * interface the front does not offer is CKR_ARGUMENTS_BAD, as p11-kit and
 * OpenSC answer. */
CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion, CK_INTERFACE_PTR_PTR ppInterface,
                     CK_FLAGS flags)
{
    CK_INTERFACE_PTR list[2];
    CK_ULONG n, i;
    if (ppInterface == NULL)
        return CKR_ARGUMENTS_BAD;
    if (front_setup_load() != 0)
        return CKR_GENERAL_ERROR;
    n = offered(list);
    for (i = 0; i < n; i++) {
        const CK_VERSION *v = list[i]->pFunctionList; /* a list begins with its version */
        if (pInterfaceName != NULL && strcmp((const char *)pInterfaceName, (const char *)list[i]->pInterfaceName) != 0)
            continue;
        if (pVersion != NULL && (pVersion->major != v->major || pVersion->minor != v->minor))
            continue;
        if ((list[i]->flags & flags) != flags)
            continue;
        *ppInterface = list[i];
        return CKR_OK;
    }
    return CKR_ARGUMENTS_BAD;
}
