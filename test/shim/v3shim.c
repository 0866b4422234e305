/*
 * v3shim.c - a PKCS#11 3.0 module made of a 2.40 one (SoftHSM2), for the
 * front's 3.0 tests (test/consumers): a vendor that reports 3.0.
 *
 * Its C_GetFunctionList returns a CK_FUNCTION_LIST_3_0 with version 3.0
 * (as some 3.0 vendors do); C_GetInterfaceList and C_GetInterface offer
 * "PKCS 11" 3.0 (that list, the default) and 2.40. The 2.40 entries are the
 * real module's. The 3.0 entries are the shim's own, and count their calls
 * (v3shim_count, exported, finds a count by function name):
 *   C_LoginUser       forwards to the real C_Login (the user name ignored)
 *   C_SessionCancel   checks the session (the real C_GetSessionInfo: its
 *                     error if that fails), sleeps V3SHIM_CANCEL_MS, CKR_OK
 *   C_Message{Decrypt,Sign,Verify}Init  CKR_MECHANISM_INVALID
 *   the other decrypt, sign and verify message functions
 *                     CKR_OPERATION_NOT_INITIALIZED
 *   the encrypt message functions       NULL entries
 *
 * Environment (read at the first C_GetFunctionList or C_GetInterface*):
 *   V3SHIM_MODULE     the real module (default: SoftHSM2's libsofthsm2.so)
 *   V3SHIM_CANCEL_MS  C_SessionCancel's sleep in ms (default 0)
 *   V3SHIM_FORK_SAFE  1: both interfaces have CKF_INTERFACE_FORK_SAFE
 *
 * Build: make build/v3shim.so
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <glob.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pkcs11v3.h"
#include "shim.h"

#define V3_EXPORT __attribute__((visibility("default")))

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST_3_0 list3;
static CK_FUNCTION_LIST list240;
static CK_CHAR name[] = "PKCS 11";
static CK_INTERFACE ifaces[2] = {{name, &list3, 0}, {name, &list240, 0}};
static long cancel_ms;
static CK_RV load_rv = CKR_GENERAL_ERROR;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

/* The functions that count their calls. */
#define V3_COUNTED(X) \
    X(C_LoginUser) X(C_SessionCancel) X(C_MessageDecryptInit) X(C_DecryptMessage) X(C_DecryptMessageBegin) \
    X(C_DecryptMessageNext) X(C_MessageDecryptFinal) X(C_MessageSignInit) X(C_SignMessage) \
    X(C_SignMessageBegin) X(C_SignMessageNext) X(C_MessageSignFinal) X(C_MessageVerifyInit) \
    X(C_VerifyMessage) X(C_VerifyMessageBegin) X(C_VerifyMessageNext) X(C_MessageVerifyFinal)

#define V3_INDEX(n) I_##n,
enum { V3_COUNTED(V3_INDEX) N_COUNTED };
#define V3_NAME(n) #n,
static const char *const counted_names[N_COUNTED] = {V3_COUNTED(V3_NAME)};
static atomic_long counts[N_COUNTED];

/* Calls of the 3.0 function of that name so far, or -1 for a name not
 * counted. */
V3_EXPORT long v3shim_count(const char *fn)
{
    int i;
    for (i = 0; i < N_COUNTED; i++)
        if (strcmp(fn, counted_names[i]) == 0)
            return atomic_load(&counts[i]);
    return -1;
}

static CK_RV v3_LoginUser(CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len,
                          CK_UTF8CHAR_PTR username, CK_ULONG username_len)
{
    (void)username;
    (void)username_len;
    atomic_fetch_add(&counts[I_C_LoginUser], 1);
    return real->C_Login(s, user, pin, pin_len);
}

static CK_RV v3_SessionCancel(CK_SESSION_HANDLE s, CK_FLAGS flags)
{
    CK_SESSION_INFO info;
    CK_RV rv = real->C_GetSessionInfo(s, &info);
    (void)flags;
    if (rv != CKR_OK)
        return rv;
    if (cancel_ms > 0) {
        struct timespec left = {cancel_ms / 1000, (cancel_ms % 1000) * 1000000L};
        while (nanosleep(&left, &left) != 0 && errno == EINTR) {
        }
    }
    atomic_fetch_add(&counts[I_C_SessionCancel], 1);
    return CKR_OK;
}

/* The message functions: (name, parameters, what they answer). */
#define V3_MESSAGE(X) \
    X(C_MessageDecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), CKR_MECHANISM_INVALID) \
    X(C_DecryptMessage, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR ad, CK_ULONG adl, \
      CK_BYTE_PTR in, CK_ULONG inl, CK_BYTE_PTR out, CK_ULONG_PTR outl), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_DecryptMessageBegin, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR ad, CK_ULONG adl), \
      CKR_OPERATION_NOT_INITIALIZED) \
    X(C_DecryptMessageNext, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR in, CK_ULONG inl, \
      CK_BYTE_PTR out, CK_ULONG_PTR outl, CK_FLAGS f), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_MessageDecryptFinal, (CK_SESSION_HANDLE s), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_MessageSignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), CKR_MECHANISM_INVALID) \
    X(C_SignMessage, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl, \
      CK_BYTE_PTR sig, CK_ULONG_PTR sigl), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_SignMessageBegin, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_SignMessageNext, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl, \
      CK_BYTE_PTR sig, CK_ULONG_PTR sigl), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_MessageSignFinal, (CK_SESSION_HANDLE s), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_MessageVerifyInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), CKR_MECHANISM_INVALID) \
    X(C_VerifyMessage, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl, \
      CK_BYTE_PTR sig, CK_ULONG sigl), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_VerifyMessageBegin, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_VerifyMessageNext, (CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl, \
      CK_BYTE_PTR sig, CK_ULONG sigl), CKR_OPERATION_NOT_INITIALIZED) \
    X(C_MessageVerifyFinal, (CK_SESSION_HANDLE s), CKR_OPERATION_NOT_INITIALIZED)

/* Parameters other than the session are not looked at. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#define V3_MESSAGE_FN(n, params, answer) \
    static CK_RV v3_##n params \
    { \
        atomic_fetch_add(&counts[I_##n], 1); \
        return answer; \
    }
V3_MESSAGE(V3_MESSAGE_FN)
#pragma GCC diagnostic pop

V3_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);
V3_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR list, CK_ULONG_PTR count);
V3_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR iname, CK_VERSION_PTR version, CK_INTERFACE_PTR_PTR iface,
                               CK_FLAGS flags);

static void v3_load(void)
{
    const char *ms = getenv("V3SHIM_CANCEL_MS"), *fs = getenv("V3SHIM_FORK_SAFE");

    cancel_ms = ms != NULL ? atol(ms) : 0;
    if (fs != NULL && strcmp(fs, "1") == 0)
        ifaces[0].flags = ifaces[1].flags = CKF_INTERFACE_FORK_SAFE;
    if ((real = shim_load_real("v3shim", "V3SHIM_MODULE")) == NULL)
        return;
    memcpy(&list240, real, sizeof list240);
    list240.version = (CK_VERSION){2, 40};
    list240.C_GetFunctionList = C_GetFunctionList;
    memcpy(&list3, &list240, sizeof list240);
    list3.version = (CK_VERSION){3, 0};
    list3.C_GetInterfaceList = C_GetInterfaceList;
    list3.C_GetInterface = C_GetInterface;
    list3.C_LoginUser = v3_LoginUser;
    list3.C_SessionCancel = v3_SessionCancel;
#define V3_ASSIGN(n, params, answer) list3.n = v3_##n;
    V3_MESSAGE(V3_ASSIGN)
#undef V3_ASSIGN
    load_rv = CKR_OK;
}

V3_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&load_once, v3_load);
    if (load_rv != CKR_OK)
        return load_rv;
    *list = (CK_FUNCTION_LIST_PTR)&list3;
    return CKR_OK;
}

V3_EXPORT CK_RV C_GetInterfaceList(CK_INTERFACE_PTR list, CK_ULONG_PTR count)
{
    if (count == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&load_once, v3_load);
    if (load_rv != CKR_OK)
        return load_rv;
    if (list == NULL) {
        *count = 2;
        return CKR_OK;
    }
    if (*count < 2) {
        *count = 2;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(list, ifaces, sizeof ifaces);
    *count = 2;
    return CKR_OK;
}

V3_EXPORT CK_RV C_GetInterface(CK_UTF8CHAR_PTR iname, CK_VERSION_PTR version, CK_INTERFACE_PTR_PTR iface,
                               CK_FLAGS flags)
{
    int i;
    if (iface == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&load_once, v3_load);
    if (load_rv != CKR_OK)
        return load_rv;
    for (i = 0; i < 2; i++) {
        const CK_VERSION *v = ifaces[i].pFunctionList;
        if ((iname == NULL || strcmp((const char *)iname, (const char *)ifaces[i].pInterfaceName) == 0) &&
            (version == NULL || (version->major == v->major && version->minor == v->minor)) &&
            (ifaces[i].flags & flags) == flags) {
            *iface = &ifaces[i];
            return CKR_OK;
        }
    }
    return CKR_ARGUMENTS_BAD;
}
