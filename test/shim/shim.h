/*
 * shim.h - what the PKCS#11 modules of test/shim share: the functions of
 * the PKCS#11 2.40 list as X-macros (name, parameters, arguments), grouped
 * by their first argument, and loading the real module each one wraps.
 * C_Initialize, C_Finalize and C_GetFunctionList are each shim's own.
 * Session parameters are named s.
 */
#ifndef HAEXT_TEST_SHIM_H
#define HAEXT_TEST_SHIM_H

#include <dlfcn.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

/* Functions that name neither a slot nor a session. */
#define SHIM_GLOBAL_FUNCTIONS(X)                                                                                \
    X(C_GetInfo, (CK_INFO_PTR info), (info))                                                                    \
    X(C_GetSlotList, (CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count), (present, list, count))       \
    X(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved), (flags, slot, reserved))

/* Functions whose first argument is a slot (C_OpenSession apart). */
#define SHIM_SLOT_FUNCTIONS(X)                                                                      \
    X(C_GetSlotInfo, (CK_SLOT_ID slot, CK_SLOT_INFO_PTR info), (slot, info))                        \
    X(C_GetTokenInfo, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info), (slot, info))                      \
    X(C_GetMechanismList, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count),        \
      (slot, list, count))                                                                          \
    X(C_GetMechanismInfo, (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info),    \
      (slot, type, info))                                                                           \
    X(C_InitToken, (CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label), \
      (slot, pin, pin_len, label))                                                                  \
    X(C_CloseAllSessions, (CK_SLOT_ID slot), (slot))

#define SHIM_OPEN_SESSION(X)                                                                         \
    X(C_OpenSession,                                                                                 \
      (CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR s), \
      (slot, flags, app, notify, s))

/* Functions whose first argument is a session. */
#define SHIM_SESSION_FUNCTIONS(X)                                                                          \
    X(C_InitPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len), (s, pin, pin_len))          \
    X(C_SetPIN,                                                                                            \
      (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len, CK_UTF8CHAR_PTR new_pin,            \
       CK_ULONG new_len),                                                                                  \
      (s, old_pin, old_len, new_pin, new_len))                                                             \
    X(C_CloseSession, (CK_SESSION_HANDLE s), (s))                                                          \
    X(C_GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info), (s, info))                        \
    X(C_GetOperationState, (CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG_PTR state_len),               \
      (s, state, state_len))                                                                               \
    X(C_SetOperationState,                                                                                 \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG state_len, CK_OBJECT_HANDLE enc_key,               \
       CK_OBJECT_HANDLE auth_key),                                                                         \
      (s, state, state_len, enc_key, auth_key))                                                            \
    X(C_Login, (CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len),            \
      (s, user, pin, pin_len))                                                                             \
    X(C_Logout, (CK_SESSION_HANDLE s), (s))                                                                \
    X(C_CreateObject, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),       \
      (s, t, n, o))                                                                                        \
    X(C_CopyObject,                                                                                        \
      (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR no),  \
      (s, o, t, n, no))                                                                                    \
    X(C_DestroyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o), (s, o))                                  \
    X(C_GetObjectSize, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ULONG_PTR size), (s, o, size))         \
    X(C_GetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n),      \
      (s, o, t, n))                                                                                        \
    X(C_SetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n),      \
      (s, o, t, n))                                                                                        \
    X(C_FindObjectsInit, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n))                 \
    X(C_FindObjects, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n),          \
      (s, o, max, n))                                                                                      \
    X(C_FindObjectsFinal, (CK_SESSION_HANDLE s), (s))                                                      \
    X(C_EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))             \
    X(C_Encrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol), \
      (s, in, in_len, out, ol))                                                                            \
    X(C_EncryptUpdate,                                                                                     \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_EncryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR ol), (s, out, ol))               \
    X(C_DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))             \
    X(C_Decrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol), \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DecryptUpdate,                                                                                     \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DecryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR ol), (s, out, ol))               \
    X(C_DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))                                     \
    X(C_Digest, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),  \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len), (s, in, in_len))             \
    X(C_DigestKey, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k), (s, k))                                      \
    X(C_DigestFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR ol), (s, out, ol))                \
    X(C_SignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))                \
    X(C_Sign, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),    \
      (s, in, in_len, out, ol))                                                                            \
    X(C_SignUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len), (s, in, in_len))               \
    X(C_SignFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR ol), (s, out, ol))                  \
    X(C_SignRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))         \
    X(C_SignRecover,                                                                                       \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_VerifyInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))              \
    X(C_Verify, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig, CK_ULONG sig_len), \
      (s, in, in_len, sig, sig_len))                                                                       \
    X(C_VerifyUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len), (s, in, in_len))             \
    X(C_VerifyFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sig_len), (s, sig, sig_len))          \
    X(C_VerifyRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))       \
    X(C_VerifyRecover,                                                                                     \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sig_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),          \
      (s, sig, sig_len, out, ol))                                                                          \
    X(C_DigestEncryptUpdate,                                                                               \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DecryptDigestUpdate,                                                                               \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_SignEncryptUpdate,                                                                                 \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DecryptVerifyUpdate,                                                                               \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_GenerateKey,                                                                                       \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),   \
      (s, m, t, n, k))                                                                                     \
    X(C_GenerateKeyPair,                                                                                   \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn, CK_ATTRIBUTE_PTR vt,     \
       CK_ULONG vn, CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv),                                  \
      (s, m, pt, pn, vt, vn, pub, priv))                                                                   \
    X(C_WrapKey,                                                                                           \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k, CK_BYTE_PTR out,  \
       CK_ULONG_PTR ol),                                                                                   \
      (s, m, wk, k, out, ol))                                                                              \
    X(C_UnwrapKey,                                                                                         \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk, CK_BYTE_PTR in, CK_ULONG in_len,      \
       CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),                                            \
      (s, m, uk, in, in_len, t, n, k))                                                                     \
    X(C_DeriveKey,                                                                                         \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE base, CK_ATTRIBUTE_PTR t, CK_ULONG n,     \
       CK_OBJECT_HANDLE_PTR k),                                                                            \
      (s, m, base, t, n, k))                                                                               \
    X(C_SeedRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR seed, CK_ULONG len), (s, seed, len))                 \
    X(C_GenerateRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG len), (s, out, len))               \
    X(C_GetFunctionStatus, (CK_SESSION_HANDLE s), (s))                                                     \
    X(C_CancelFunction, (CK_SESSION_HANDLE s), (s))

/* The SoftHSM2 module, searched as test/lab/lab.sh searches it. */
static inline int shim_default_module(char *out, size_t size)
{
    static const char *const patterns[] = {
        "/usr/lib/*-linux-gnu*/softhsm/libsofthsm2.so", "/usr/lib/*/softhsm/libsofthsm2.so",
        "/usr/lib64/softhsm/libsofthsm2.so",           "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    };
    size_t i;
    for (i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        glob_t g;
        int found = 0;
        if (glob(patterns[i], 0, NULL, &g) == 0 && g.gl_pathc > 0 && access(g.gl_pathv[0], R_OK) == 0) {
            snprintf(out, size, "%s", g.gl_pathv[0]);
            found = 1;
        }
        globfree(&g);
        if (found)
            return 0;
    }
    return -1;
}

/* Loads the module named by the environment variable env (default:
 * SoftHSM2) and returns its function list, or NULL with the reason on
 * standard error, prefixed by who. */
static inline CK_FUNCTION_LIST_PTR shim_load_real(const char *who, const char *env)
{
    char path[4096];
    const char *name = getenv(env);
    CK_C_GetFunctionList gfl;
    CK_FUNCTION_LIST_PTR real = NULL;
    void *handle;

    if (name != NULL && *name != 0) {
        snprintf(path, sizeof path, "%s", name);
    } else if (shim_default_module(path, sizeof path) != 0) {
        fprintf(stderr, "%s: %s unset and libsofthsm2.so not found\n", who, env);
        return NULL;
    }
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        fprintf(stderr, "%s: dlopen %s: %s\n", who, path, dlerror());
        return NULL;
    }
    gfl = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
    if (gfl == NULL || gfl(&real) != CKR_OK || real == NULL) {
        fprintf(stderr, "%s: C_GetFunctionList of %s failed\n", who, path);
        return NULL;
    }
    return real;
}

#endif
