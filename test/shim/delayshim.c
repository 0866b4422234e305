/*
 * delayshim.c - a PKCS#11 module that adds a fixed latency to every call of
 * another module: it forwards each call to the real module after sleeping
 * DELAYSHIM_US microseconds (nanosleep). Loaded as the provider of a
 * `p11-kit server`, it puts the delay on the server side, once per round
 * trip, as the network and an HSM would.
 *
 * Environment (read at the first C_GetFunctionList):
 *   DELAYSHIM_MODULE  the real module (default: SoftHSM2's libsofthsm2.so,
 *                     looked for where test/lab/lab.sh looks)
 *   DELAYSHIM_US      the delay per call in microseconds (default 0)
 *   DELAYSHIM_ONLY    delay only the function of that name (e.g.
 *                     C_GetSessionInfo); default: every delayed function
 *   DELAYSHIM_LOCK    1: every call, delay included, runs holding one
 *                     module-wide mutex, as vendors that serialize their
 *                     calls do (a fork child then inherits it held when a
 *                     thread was inside a call at fork time)
 *   DELAYSHIM_EXIT_REPORT  a file: when exit() runs the handler the
 *                     module registered with atexit when it was loaded
 *                     (where a C++ vendor's static destructors stand), it
 *                     appends "inflight=N" there: how many calls were
 *                     inside the module at that moment, which a vendor's
 *                     destructors would pull the ground from under
 *
 * C_GetFunctionList, C_Initialize and C_Finalize are not delayed; all the
 * other PKCS#11 2.x functions are. delayshim_set_us(us), exported, changes
 * the delay while the module runs (tests find it with dlsym).
 *
 * Build: cc -std=c99 -Wall -Wextra -Werror -O2 -fPIC -shared \
 *          $(pkg-config --cflags p11-kit-1) -o build/delayshim.so \
 *          test/shim/delayshim.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <glob.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define DS_EXPORT __attribute__((visibility("default")))

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST wrapped;
static _Atomic long delay_us;
static _Atomic int inflight;
static char only[64];
static int locked;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_RV load_rv = CKR_GENERAL_ERROR;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

DS_EXPORT void delayshim_set_us(long us)
{
    delay_us = us > 0 ? us : 0;
}

static void ds_delay(const char *name)
{
    long us = delay_us;
    struct timespec left;
    if (us == 0 || (only[0] != 0 && strcmp(name, only) != 0)) {
        return;
    }
    left.tv_sec = us / 1000000L;
    left.tv_nsec = (us % 1000000L) * 1000L;
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

static void ds_lock(void)
{
    if (locked) {
        pthread_mutex_lock(&call_mu);
    }
}

static void ds_unlock(void)
{
    if (locked) {
        pthread_mutex_unlock(&call_mu);
    }
}

/* Every delayed function: name, parameters, arguments. */
#define DS_FUNCTIONS(X)                                                                                    \
    X(C_GetInfo, (CK_INFO_PTR info), (info))                                                               \
    X(C_GetSlotList, (CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count), (present, list, count))  \
    X(C_GetSlotInfo, (CK_SLOT_ID slot, CK_SLOT_INFO_PTR info), (slot, info))                               \
    X(C_GetTokenInfo, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info), (slot, info))                             \
    X(C_GetMechanismList, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count),               \
      (slot, list, count))                                                                                 \
    X(C_GetMechanismInfo, (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info),           \
      (slot, type, info))                                                                                  \
    X(C_InitToken, (CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label),        \
      (slot, pin, pin_len, label))                                                                         \
    X(C_InitPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len), (s, pin, pin_len))          \
    X(C_SetPIN,                                                                                            \
      (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len, CK_UTF8CHAR_PTR new_pin,            \
       CK_ULONG new_len),                                                                                  \
      (s, old_pin, old_len, new_pin, new_len))                                                             \
    X(C_OpenSession,                                                                                       \
      (CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR s),       \
      (slot, flags, app, notify, s))                                                                       \
    X(C_CloseSession, (CK_SESSION_HANDLE s), (s))                                                          \
    X(C_CloseAllSessions, (CK_SLOT_ID slot), (slot))                                                       \
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
    X(C_CancelFunction, (CK_SESSION_HANDLE s), (s))                                                        \
    X(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved), (flags, slot, reserved))

#define DS_WRAPPER(name, params, args)                                                                     \
    static CK_RV ds_##name params                                                                          \
    {                                                                                                      \
        CK_RV rv_;                                                                                         \
        inflight++;                                                                                        \
        ds_lock();                                                                                         \
        ds_delay(#name);                                                                                   \
        rv_ = real->name args;                                                                             \
        ds_unlock();                                                                                       \
        inflight--;                                                                                        \
        return rv_;                                                                                        \
    }
DS_FUNCTIONS(DS_WRAPPER)

/* Not delayed: loading and unloading are not round trips to the HSM. */
static CK_RV ds_C_Initialize(CK_VOID_PTR args)
{
    CK_RV rv;
    ds_lock();
    rv = real->C_Initialize(args);
    ds_unlock();
    return rv;
}

static CK_RV ds_C_Finalize(CK_VOID_PTR reserved)
{
    CK_RV rv;
    ds_lock();
    rv = real->C_Finalize(reserved);
    ds_unlock();
    return rv;
}

/* Registered with atexit when the module is loaded, as a C++ vendor's
 * static destructors are. */
static void ds_exit_report(void)
{
    const char *path = getenv("DELAYSHIM_EXIT_REPORT");
    FILE *f;
    if (path == NULL || *path == 0 || (f = fopen(path, "a")) == NULL) {
        return;
    }
    fprintf(f, "inflight=%d\n", (int)inflight);
    fclose(f);
}

/* The SoftHSM2 module, searched as test/lab/lab.sh searches it. */
static int default_module(char *out, size_t size)
{
    static const char *const patterns[] = {
        "/usr/lib/*-linux-gnu*/softhsm/libsofthsm2.so",
        "/usr/lib/*/softhsm/libsofthsm2.so",
        "/usr/lib64/softhsm/libsofthsm2.so",
        "/usr/lib/softhsm/libsofthsm2.so",
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
        if (found) {
            return 0;
        }
    }
    return -1;
}

static void ds_load(void)
{
    char path[4096];
    const char *env = getenv("DELAYSHIM_MODULE");
    const char *us_text = getenv("DELAYSHIM_US");
    const char *only_text = getenv("DELAYSHIM_ONLY");
    const char *lock_text = getenv("DELAYSHIM_LOCK");
    CK_C_GetFunctionList gfl;
    void *handle;
    long us = 0;

    if (us_text && *us_text) {
        char *end;
        us = strtol(us_text, &end, 10);
        if (*end != 0 || us < 0) {
            fprintf(stderr, "delayshim: bad DELAYSHIM_US '%s'\n", us_text);
            return;
        }
    }
    delay_us = us;
    if (only_text && *only_text) {
        if (strlen(only_text) >= sizeof only) {
            fprintf(stderr, "delayshim: DELAYSHIM_ONLY '%s' is too long\n", only_text);
            return;
        }
        snprintf(only, sizeof only, "%s", only_text);
    }
    locked = lock_text != NULL && strcmp(lock_text, "1") == 0;

    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else if (default_module(path, sizeof path) != 0) {
        fprintf(stderr, "delayshim: DELAYSHIM_MODULE unset and libsofthsm2.so not found\n");
        return;
    }
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        fprintf(stderr, "delayshim: dlopen %s: %s\n", path, dlerror());
        return;
    }
    gfl = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
    if (!gfl || gfl(&real) != CKR_OK || !real) {
        fprintf(stderr, "delayshim: C_GetFunctionList of %s failed\n", path);
        real = NULL;
        return;
    }
    memset(&wrapped, 0, sizeof wrapped);
    wrapped.version = real->version;
    wrapped.C_Initialize = ds_C_Initialize;
    wrapped.C_Finalize = ds_C_Finalize;
    wrapped.C_GetFunctionList = C_GetFunctionList;
#define DS_ASSIGN(name, params, args) wrapped.name = ds_##name;
    DS_FUNCTIONS(DS_ASSIGN)
#undef DS_ASSIGN
    atexit(ds_exit_report);
    load_rv = CKR_OK;
}

DS_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (!list) {
        return CKR_ARGUMENTS_BAD;
    }
    pthread_once(&load_once, ds_load);
    if (load_rv != CKR_OK) {
        return load_rv;
    }
    *list = &wrapped;
    return CKR_OK;
}
