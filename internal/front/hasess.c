/*
 * hasess.c - the host's calls on an HA session (front_ha_<name>, one
 * per function of functions.h that takes a session; the trampolines send
 * a call here when its session is an HA session).
 *
 * Operations go through haop.c; object calls through haobj.c. What the HA
 * slot refuses, with the reason for CA_GetHAExtLastError: token
 * administration (C_InitPIN, C_SetPIN; C_InitToken is session.c's), the
 * operation state, SO login (CKR_USER_TYPE_INVALID), dual-function updates
 * and C_DigestKey, and writing token objects: creating, generating,
 * unwrapping or deriving one (CKR_TEMPLATE_INCONSISTENT), copying, changing
 * or destroying one (CKR_ACTION_PROHIBITED). Replicated writes are a later
 * step: members are provisioned with identical keys (README).
 */
#include <stdlib.h>
#include <string.h>

#include "ha.h"
#include "state.h"

#define SESS(e) \
    struct front_ha_sess *e = front_haslot_session(hSession); \
    if (e == NULL) \
    return CKR_SESSION_HANDLE_INVALID

static CK_RV unsupported(const char *what)
{
    return front_haslot_refuse(CKR_FUNCTION_NOT_SUPPORTED, what);
}

CK_RV front_ha_C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
    int rw;
    SESS(e);
    if (pInfo == NULL)
        return CKR_ARGUMENTS_BAD;
    rw = (e->flags & CKF_RW_SESSION) != 0;
    memset(pInfo, 0, sizeof *pInfo);
    pInfo->slotID = e->s->id;
    pInfo->flags = e->flags;
    pInfo->state = e->s->logged_in ? (rw ? CKS_RW_USER_FUNCTIONS : CKS_RO_USER_FUNCTIONS)
                                   : (rw ? CKS_RW_PUBLIC_SESSION : CKS_RO_PUBLIC_SESSION);
    return CKR_OK;
}

CK_RV front_ha_C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG len)
{
    SESS(e);
    if (user == CKU_SO)
        return front_haslot_refuse(CKR_USER_TYPE_INVALID,
                                   "no SO login on an HA slot: administer each member through its own slot");
    if (user == CKU_CONTEXT_SPECIFIC) {
        if (e->op.kind == 0)
            return CKR_OPERATION_NOT_INITIALIZED;
        e->op.pinned = 1; /* the PIN is not kept for a replay */
        return front_vendor_copy.C_Login(e->op.real, user, pin, len);
    }
    if (user != CKU_USER)
        return CKR_USER_TYPE_INVALID;
    return front_halogin_login(e->s, pin, len);
}

CK_RV front_ha_C_Logout(CK_SESSION_HANDLE hSession)
{
    SESS(e);
    return front_halogin_logout(e->s);
}

CK_RV front_ha_C_GetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR p, CK_ULONG_PTR n)
{
    (void)hSession, (void)p, (void)n;
    return unsupported("C_GetOperationState: an operation's state is its member's alone");
}

CK_RV front_ha_C_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR p, CK_ULONG n, CK_OBJECT_HANDLE a,
                                       CK_OBJECT_HANDLE b)
{
    (void)hSession, (void)p, (void)n, (void)a, (void)b;
    return unsupported("C_SetOperationState: an operation's state is its member's alone");
}

CK_RV front_ha_C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR p, CK_ULONG n)
{
    (void)hSession, (void)p, (void)n;
    return unsupported("C_InitPIN: token administration goes to each member's own slot");
}

CK_RV front_ha_C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR a, CK_ULONG an, CK_UTF8CHAR_PTR b,
                            CK_ULONG bn)
{
    (void)hSession, (void)a, (void)an, (void)b, (void)bn;
    return unsupported("C_SetPIN: token administration goes to each member's own slot");
}

/* --- operations ------------------------------------------------------------ */

#define OP_INIT(name, kind) \
    FRONT_HOT CK_RV front_ha_##name(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech, CK_OBJECT_HANDLE hKey) \
    { \
        SESS(e); \
        return front_haop_init(e->s, &e->op, &e->key, kind, pMech, hKey); \
    }

#define OP_DATA(name, kind, stage) \
    FRONT_HOT CK_RV front_ha_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
                              CK_ULONG_PTR pulOut) \
    { \
        struct front_ha_args a = {pIn, ulIn, pOut, pulOut}; \
        SESS(e); \
        if (pulOut == NULL) \
            return CKR_ARGUMENTS_BAD; \
        return front_haop_call(e->s, &e->op, kind, stage, &a); \
    }

#define OP_UPDATE(name, kind) \
    FRONT_HOT CK_RV front_ha_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn) \
    { \
        struct front_ha_args a = {pIn, ulIn, NULL, NULL}; \
        SESS(e); \
        return front_haop_call(e->s, &e->op, kind, FRONT_HA_UPDATE, &a); \
    }

#define OP_FINAL(name, kind) \
    FRONT_HOT CK_RV front_ha_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOut, CK_ULONG_PTR pulOut) \
    { \
        struct front_ha_args a = {NULL, 0, pOut, pulOut}; \
        SESS(e); \
        if (pulOut == NULL) \
            return CKR_ARGUMENTS_BAD; \
        return front_haop_call(e->s, &e->op, kind, FRONT_HA_FINAL, &a); \
    }

OP_INIT(C_SignInit, FRONT_HA_OP_SIGN)
OP_DATA(C_Sign, FRONT_HA_OP_SIGN, FRONT_HA_SINGLE)
OP_UPDATE(C_SignUpdate, FRONT_HA_OP_SIGN)
OP_FINAL(C_SignFinal, FRONT_HA_OP_SIGN)
OP_INIT(C_SignRecoverInit, FRONT_HA_OP_SIGNREC)
OP_DATA(C_SignRecover, FRONT_HA_OP_SIGNREC, FRONT_HA_SINGLE)
OP_INIT(C_VerifyInit, FRONT_HA_OP_VERIFY)
OP_UPDATE(C_VerifyUpdate, FRONT_HA_OP_VERIFY)
OP_INIT(C_VerifyRecoverInit, FRONT_HA_OP_VERIFYREC)
OP_DATA(C_VerifyRecover, FRONT_HA_OP_VERIFYREC, FRONT_HA_SINGLE)
OP_INIT(C_EncryptInit, FRONT_HA_OP_ENCRYPT)
OP_DATA(C_Encrypt, FRONT_HA_OP_ENCRYPT, FRONT_HA_SINGLE)
OP_DATA(C_EncryptUpdate, FRONT_HA_OP_ENCRYPT, FRONT_HA_UPDATE)
OP_FINAL(C_EncryptFinal, FRONT_HA_OP_ENCRYPT)
OP_INIT(C_DecryptInit, FRONT_HA_OP_DECRYPT)
OP_DATA(C_Decrypt, FRONT_HA_OP_DECRYPT, FRONT_HA_SINGLE)
OP_DATA(C_DecryptUpdate, FRONT_HA_OP_DECRYPT, FRONT_HA_UPDATE)
OP_FINAL(C_DecryptFinal, FRONT_HA_OP_DECRYPT)
OP_DATA(C_Digest, FRONT_HA_OP_DIGEST, FRONT_HA_SINGLE)
OP_UPDATE(C_DigestUpdate, FRONT_HA_OP_DIGEST)
OP_FINAL(C_DigestFinal, FRONT_HA_OP_DIGEST)

CK_RV front_ha_C_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMech)
{
    SESS(e);
    return front_haop_init(e->s, &e->op, &e->key, FRONT_HA_OP_DIGEST, pMech, CK_INVALID_HANDLE);
}

FRONT_HOT CK_RV front_ha_C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pSig,
                            CK_ULONG ulSig)
{
    struct front_ha_args a = {pIn, ulIn, pSig, &ulSig};
    SESS(e);
    return front_haop_call(e->s, &e->op, FRONT_HA_OP_VERIFY, FRONT_HA_SINGLE, &a);
}

CK_RV front_ha_C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSig, CK_ULONG ulSig)
{
    struct front_ha_args a = {NULL, 0, pSig, &ulSig};
    SESS(e);
    return front_haop_call(e->s, &e->op, FRONT_HA_OP_VERIFY, FRONT_HA_FINAL, &a);
}

CK_RV front_ha_C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
    (void)hSession, (void)hKey;
    return unsupported("C_DigestKey is not supported on an HA slot");
}

#define DUAL(name) \
    CK_RV front_ha_##name(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pIn, CK_ULONG ulIn, CK_BYTE_PTR pOut, \
                              CK_ULONG_PTR pulOut) \
    { \
        (void)hSession, (void)pIn, (void)ulIn, (void)pOut, (void)pulOut; \
        return unsupported(#name ": dual-function operations are not supported on an HA slot"); \
    }
DUAL(C_DigestEncryptUpdate)
DUAL(C_DecryptDigestUpdate)
DUAL(C_SignEncryptUpdate)
DUAL(C_DecryptVerifyUpdate)

CK_RV front_ha_C_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
    (void)hSession;
    return CKR_FUNCTION_NOT_PARALLEL;
}

CK_RV front_ha_C_CancelFunction(CK_SESSION_HANDLE hSession)
{
    (void)hSession;
    return CKR_FUNCTION_NOT_PARALLEL;
}

/* --- searches ---------------------------------------------------------------- */

CK_RV front_ha_C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
    CK_RV rv;
    SESS(e);
    if (e->finding)
        return CKR_OPERATION_ACTIVE;
    if (t == NULL && n > 0)
        return CKR_ARGUMENTS_BAD;
    rv = front_haobj_find(e->s, t, n, &e->found, &e->nfound);
    if (rv == CKR_OK) {
        e->finding = 1;
        e->pos = 0;
    }
    return rv;
}

CK_RV front_ha_C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR out, CK_ULONG max,
                                 CK_ULONG_PTR n)
{
    CK_ULONG k;
    SESS(e);
    if (!e->finding)
        return CKR_OPERATION_NOT_INITIALIZED;
    if (n == NULL || (out == NULL && max > 0))
        return CKR_ARGUMENTS_BAD;
    k = e->nfound - e->pos < max ? e->nfound - e->pos : max;
    if (k > 0)
        memcpy(out, e->found + e->pos, k * sizeof *out);
    e->pos += k;
    *n = k;
    return CKR_OK;
}

CK_RV front_ha_C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
    SESS(e);
    if (!e->finding)
        return CKR_OPERATION_NOT_INITIALIZED;
    free(e->found);
    e->found = NULL;
    e->nfound = e->pos = 0;
    e->finding = 0;
    return CKR_OK;
}
