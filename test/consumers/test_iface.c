/*
 * test_iface.c - the front's PKCS#11 3.0 interfaces, as a 3.0-aware host
 * (JDK, NSS) sees them: it dlopens build/libhaext-pkcs11.so, looks up
 * C_GetInterface first, and works through the list it gets.
 *
 *   test_iface FRONT v3    the vendor (Chrystoki2/LibHAExtVendor) is
 *                          test/shim/v3shim.c over SoftHSM2: a vendor that
 *                          reports 3.0. V3SHIM_PATH names it (its counters);
 *                          V3SHIM_FORK_SAFE=1: its interfaces are fork-safe,
 *                          and the front's must say so too.
 *   test_iface FRONT v240  the vendor is SoftHSM2 (2.40): 3.0 is refused.
 *
 * Environment: ChrystokiConfigurationPath, SOFTHSM2_CONF (test/lab, direct
 * mode); token m00, user PIN 1234. Prints ok/not ok lines and "N passed,
 * N failed".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "pkcs11v3.h"

#define USER_PIN "1234"
#define NAME (CK_UTF8CHAR_PTR) "PKCS 11"

static CK_C_GetFunctionList gfl;
static CK_C_GetInterfaceList gil;
static CK_C_GetInterface gi;
static CK_FUNCTION_LIST_PTR list240; /* C_GetFunctionList's */
static long (*shim_count)(const char *);
static int fork_safe;

static CK_VERSION version_of(const CK_INTERFACE *i)
{
    return *(const CK_VERSION *)i->pFunctionList;
}

static int is_version(const CK_INTERFACE *i, int major, int minor)
{
    return i != NULL && version_of(i).major == major && version_of(i).minor == minor;
}

static long count(const char *fn)
{
    return shim_count != NULL ? shim_count(fn) : -1;
}

static CK_SLOT_ID slot_of(CK_FUNCTION_LIST_PTR f, const char *label)
{
    CK_SLOT_ID list[16];
    CK_ULONG n = 16, i;
    if (f->C_GetSlotList(CK_TRUE, list, &n) != CKR_OK)
        return (CK_SLOT_ID)-1;
    for (i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(list[i], &ti) == CKR_OK && strncmp((char *)ti.label, label, strlen(label)) == 0 &&
            ti.label[strlen(label)] == ' ')
            return list[i];
    }
    return (CK_SLOT_ID)-1;
}

/* Initializes through f, opens a session on m00, logs in (C_LoginUser on a
 * 3.0 list), signs and verifies with a session HMAC key. Returns the
 * session (open, logged in), or CK_INVALID_HANDLE. */
static CK_SESSION_HANDLE sign_verify(CK_FUNCTION_LIST_PTR f, CK_FUNCTION_LIST_3_0 *f3, const char *how)
{
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE key;
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0}, mac = {CKM_SHA256_HMAC, NULL, 0};
    CK_BYTE sig[64];
    CK_ULONG len = 32, siglen = sizeof sig;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {{CKA_VALUE_LEN, &len, sizeof len}, {CKA_SIGN, &yes, sizeof yes},
                           {CKA_VERIFY, &yes, sizeof yes}};
    CK_SLOT_ID slot;
    CK_RV rv;
    rv = f->C_Initialize(NULL);
    check(rv == CKR_OK, "%s: C_Initialize: 0x%lx", how, rv);
    slot = slot_of(f, "m00");
    check(slot != (CK_SLOT_ID)-1, "%s: token m00 found", how);
    rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    check(rv == CKR_OK, "%s: C_OpenSession: 0x%lx", how, rv);
    if (f3 != NULL) {
        long before = count("C_LoginUser");
        rv = f3->C_LoginUser(h, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN), (CK_UTF8CHAR_PTR) "u", 1);
        check(rv == CKR_OK && count("C_LoginUser") == before + 1,
              "%s: C_LoginUser reaches the vendor's C_LoginUser (0x%lx, its count %ld -> %ld)", how, rv, before,
              count("C_LoginUser"));
    } else {
        rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN));
        check(rv == CKR_OK, "%s: C_Login: 0x%lx", how, rv);
    }
    rv = f->C_GenerateKey(h, &gen, tmpl, 3, &key);
    check(rv == CKR_OK, "%s: C_GenerateKey (HMAC key): 0x%lx", how, rv);
    rv = f->C_SignInit(h, &mac, key);
    if (rv == CKR_OK)
        rv = f->C_Sign(h, (CK_BYTE_PTR) "hello", 5, sig, &siglen);
    check(rv == CKR_OK && siglen == 32, "%s: C_SignInit, C_Sign on SoftHSM2: 0x%lx, %lu bytes", how, rv, siglen);
    rv = f->C_VerifyInit(h, &mac, key);
    if (rv == CKR_OK)
        rv = f->C_Verify(h, (CK_BYTE_PTR) "hello", 5, sig, siglen);
    check(rv == CKR_OK, "%s: C_VerifyInit, C_Verify: 0x%lx", how, rv);
    return h;
}

static void test_lookup(void *lib)
{
    CK_RV rv;
    gfl = (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList");
    gil = (CK_C_GetInterfaceList)dlsym(lib, "C_GetInterfaceList");
    gi = (CK_C_GetInterface)dlsym(lib, "C_GetInterface");
    check(gil != NULL && gi != NULL, "the front exports C_GetInterfaceList and C_GetInterface");
    if (gi != NULL) {
        /* A 3.0 host's first call: it loads the vendor. */
        CK_INTERFACE_PTR i = NULL;
        rv = gi(NULL, NULL, &i, 0);
        check(rv == CKR_OK && i != NULL, "C_GetInterface as the first call loads the vendor: 0x%lx", rv);
    }
    rv = gfl != NULL ? gfl(&list240) : CKR_GENERAL_ERROR;
    check(rv == CKR_OK && list240 != NULL, "C_GetFunctionList: 0x%lx", rv);
    check(list240 != NULL && list240->version.major == 2 && list240->version.minor == 40,
          "C_GetFunctionList's list is version 2.40, the front's own (got %u.%u)",
          list240 ? list240->version.major : 0, list240 ? list240->version.minor : 0);
}

/* The vendor reports 3.0. */
static void test_v3(void)
{
    CK_INTERFACE all[4];
    CK_INTERFACE_PTR i = NULL, i30 = NULL, i240 = NULL;
    CK_VERSION v30 = {3, 0}, v240 = {2, 40}, v31 = {3, 1};
    CK_FUNCTION_LIST_3_0 *l3;
    CK_FLAGS want = fork_safe ? CKF_INTERFACE_FORK_SAFE : 0;
    CK_ULONG n = 0, k;
    CK_SESSION_HANDLE h;
    CK_RV rv;
    long before;

    if (gi == NULL || gil == NULL || list240 == NULL)
        return;
    rv = gil(NULL, &n);
    check(rv == CKR_OK && n == 2, "C_GetInterfaceList(NULL): the count, 2 (0x%lx, %lu)", rv, n);
    check(gil(all, NULL) == CKR_ARGUMENTS_BAD, "C_GetInterfaceList without pulCount: CKR_ARGUMENTS_BAD");
    n = 1;
    rv = gil(all, &n);
    check(rv == CKR_BUFFER_TOO_SMALL && n == 2, "room for 1: CKR_BUFFER_TOO_SMALL and the count 2 (0x%lx, %lu)",
          rv, n);
    n = 4;
    rv = gil(all, &n);
    check(rv == CKR_OK && n == 2, "C_GetInterfaceList: 0x%lx, %lu interfaces", rv, n);
    for (k = 0; rv == CKR_OK && k < n; k++) {
        if (is_version(&all[k], 3, 0))
            i30 = &all[k];
        if (is_version(&all[k], 2, 40))
            i240 = &all[k];
    }
    check(i30 != NULL && i240 != NULL && strcmp((char *)i30->pInterfaceName, "PKCS 11") == 0 &&
              strcmp((char *)i240->pInterfaceName, "PKCS 11") == 0,
          "it lists \"PKCS 11\" 3.0 and 2.40");
    check(i240 != NULL && i240->pFunctionList == list240, "the 2.40 interface is C_GetFunctionList's list");
    check(i30 != NULL && i240 != NULL && i30->flags == want && i240->flags == want,
          "flags: %s, as the vendor's", want ? "CKF_INTERFACE_FORK_SAFE" : "0");

    rv = gi(NULL, NULL, &i, 0);
    check(rv == CKR_OK && is_version(i, 3, 0), "C_GetInterface(NULL, NULL): the default, 3.0 (0x%lx)", rv);
    i = NULL;
    rv = gi(NAME, NULL, &i, 0);
    check(rv == CKR_OK && is_version(i, 3, 0), "C_GetInterface(\"PKCS 11\", NULL): 3.0 (0x%lx)", rv);
    i = NULL;
    rv = gi(NULL, &v240, &i, 0);
    check(rv == CKR_OK && i != NULL && i->pFunctionList == list240, "C_GetInterface(NULL, 2.40): the 2.40 list");
    i = NULL;
    rv = gi(NAME, &v240, &i, 0);
    check(rv == CKR_OK && i != NULL && i->pFunctionList == list240,
          "C_GetInterface(\"PKCS 11\", 2.40): C_GetFunctionList's list (0x%lx)", rv);
    i = NULL;
    rv = gi(NAME, &v30, &i, want);
    check(rv == CKR_OK && is_version(i, 3, 0), "C_GetInterface(\"PKCS 11\", 3.0, flags 0x%lx): 0x%lx", want, rv);
    if (rv != CKR_OK || !is_version(i, 3, 0))
        return;
    l3 = i->pFunctionList;
    check(memcmp((char *)l3 + sizeof(CK_VERSION), (char *)list240 + sizeof(CK_VERSION),
                 sizeof(CK_FUNCTION_LIST) - sizeof(CK_VERSION)) == 0,
          "the 3.0 list's 68 2.40 entries are the 2.40 list's");
    check(l3->C_GetInterfaceList == gil && l3->C_GetInterface == gi,
          "its C_GetInterfaceList and C_GetInterface are the exported ones");
    check(l3->C_LoginUser != NULL && l3->C_SessionCancel != NULL && l3->C_MessageEncryptInit != NULL &&
              l3->C_MessageVerifyFinal != NULL,
          "its 3.0 entries are set");

    {
        CK_INTERFACE_PTR keep = i;
        CK_UTF8CHAR other[] = "Vendor";
        check(gi(NAME, &v30, NULL, 0) == CKR_ARGUMENTS_BAD, "no ppInterface: CKR_ARGUMENTS_BAD");
        check(gi(other, NULL, &i, 0) == CKR_ARGUMENTS_BAD && i == keep,
              "an interface name not offered: CKR_ARGUMENTS_BAD, *ppInterface untouched");
        check(gi(NAME, &v31, &i, 0) == CKR_ARGUMENTS_BAD, "version 3.1: CKR_ARGUMENTS_BAD");
        rv = gi(NAME, &v30, &i, CKF_INTERFACE_FORK_SAFE);
        check(fork_safe ? rv == CKR_OK : rv == CKR_ARGUMENTS_BAD,
              "asking for CKF_INTERFACE_FORK_SAFE: %s (0x%lx)", fork_safe ? "CKR_OK" : "CKR_ARGUMENTS_BAD", rv);
    }

    h = sign_verify((CK_FUNCTION_LIST_PTR)l3, l3, "3.0 list");
    before = count("C_SessionCancel");
    rv = l3->C_SessionCancel(h, 0);
    check(rv == CKR_OK && count("C_SessionCancel") == before + 1,
          "C_SessionCancel reaches the vendor's C_SessionCancel (0x%lx, its count %ld -> %ld)", rv, before,
          count("C_SessionCancel"));
    rv = l3->C_SessionCancel(0x7fff0001UL, 0);
    check(rv == CKR_SESSION_HANDLE_INVALID, "C_SessionCancel on a handle nobody opened: the vendor's answer (0x%lx)",
          rv);
    /* The vendor's encrypt message entries are NULL. */
    rv = l3->C_MessageEncryptInit(h, NULL, 0);
    check(rv == CKR_FUNCTION_NOT_SUPPORTED, "C_MessageEncryptInit, NULL in the vendor's list: "
          "CKR_FUNCTION_NOT_SUPPORTED (0x%lx)", rv);
    check(l3->C_EncryptMessage(h, NULL, 0, NULL, 0, NULL, 0, NULL, NULL) == CKR_FUNCTION_NOT_SUPPORTED &&
              l3->C_EncryptMessageBegin(h, NULL, 0, NULL, 0) == CKR_FUNCTION_NOT_SUPPORTED &&
              l3->C_EncryptMessageNext(h, NULL, 0, NULL, 0, NULL, NULL, 0) == CKR_FUNCTION_NOT_SUPPORTED &&
              l3->C_MessageEncryptFinal(h) == CKR_FUNCTION_NOT_SUPPORTED,
          "the other encrypt message functions too");
    {
        /* Each of the others reaches the vendor's function of its name. */
        CK_ULONG out = 0;
        int wired = 0, total = 0;
#define CALL(fn, call, answer) \
    do { \
        long c0 = count(#fn); \
        CK_RV r = l3->fn call; \
        total++; \
        if (r == (answer) && count(#fn) == c0 + 1) \
            wired++; \
        else \
            note("%s: 0x%lx, its count %ld -> %ld", #fn, r, c0, count(#fn)); \
    } while (0)
        CALL(C_MessageDecryptInit, (h, NULL, 0), CKR_MECHANISM_INVALID);
        CALL(C_DecryptMessage, (h, NULL, 0, NULL, 0, NULL, 0, NULL, &out), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_DecryptMessageBegin, (h, NULL, 0, NULL, 0), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_DecryptMessageNext, (h, NULL, 0, NULL, 0, NULL, &out, 0), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_MessageDecryptFinal, (h), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_MessageSignInit, (h, NULL, 0), CKR_MECHANISM_INVALID);
        CALL(C_SignMessage, (h, NULL, 0, NULL, 0, NULL, &out), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_SignMessageBegin, (h, NULL, 0), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_SignMessageNext, (h, NULL, 0, NULL, 0, NULL, &out), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_MessageSignFinal, (h), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_MessageVerifyInit, (h, NULL, 0), CKR_MECHANISM_INVALID);
        CALL(C_VerifyMessage, (h, NULL, 0, NULL, 0, NULL, 0), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_VerifyMessageBegin, (h, NULL, 0), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_VerifyMessageNext, (h, NULL, 0, NULL, 0, NULL, 0), CKR_OPERATION_NOT_INITIALIZED);
        CALL(C_MessageVerifyFinal, (h), CKR_OPERATION_NOT_INITIALIZED);
#undef CALL
        check(wired == total, "the %d decrypt, sign and verify message functions each reach the vendor's of "
              "that name (%d did)", total, wired);
    }
    rv = l3->C_CloseSession(h);
    check(rv == CKR_OK, "C_CloseSession: 0x%lx", rv);
    rv = l3->C_Finalize(NULL);
    check(rv == CKR_OK, "C_Finalize: 0x%lx", rv);
}

/* The vendor is 2.40 only. */
static void test_v240(void)
{
    CK_INTERFACE all[4];
    CK_INTERFACE_PTR i = NULL, keep;
    CK_VERSION v30 = {3, 0}, v240 = {2, 40};
    CK_ULONG n = 0;
    CK_SESSION_HANDLE h;
    CK_RV rv;

    if (gi == NULL || gil == NULL || list240 == NULL)
        return;
    rv = gil(NULL, &n);
    check(rv == CKR_OK && n == 1, "C_GetInterfaceList(NULL): 1 interface (0x%lx, %lu)", rv, n);
    n = 4;
    rv = gil(all, &n);
    check(rv == CKR_OK && n == 1 && is_version(&all[0], 2, 40) && all[0].pFunctionList == list240 &&
              all[0].flags == 0 && strcmp((char *)all[0].pInterfaceName, "PKCS 11") == 0,
          "it is \"PKCS 11\" 2.40, C_GetFunctionList's list, flags 0");
    rv = gi(NAME, &v30, &i, 0);
    check(rv == CKR_ARGUMENTS_BAD && i == NULL,
          "C_GetInterface(\"PKCS 11\", 3.0): CKR_ARGUMENTS_BAD, *ppInterface untouched (0x%lx)", rv);
    rv = gi(NULL, NULL, &i, 0);
    check(rv == CKR_OK && i != NULL && i->pFunctionList == list240,
          "C_GetInterface(NULL, NULL): the default, 2.40 (0x%lx)", rv);
    keep = i;
    i = NULL;
    rv = gi(NAME, &v240, &i, 0);
    check(rv == CKR_OK && i == keep, "C_GetInterface(\"PKCS 11\", 2.40): the same (0x%lx)", rv);
    if (i == NULL)
        return;
    h = sign_verify(i->pFunctionList, NULL, "2.40 interface");
    rv = list240->C_CloseSession(h);
    check(rv == CKR_OK, "C_CloseSession: 0x%lx", rv);
    rv = list240->C_Finalize(NULL);
    check(rv == CKR_OK, "C_Finalize: 0x%lx", rv);
}

int main(int argc, char **argv)
{
    void *lib;
    if (argc != 3 || (strcmp(argv[2], "v3") != 0 && strcmp(argv[2], "v240") != 0)) {
        fprintf(stderr, "usage: test_iface FRONT v3|v240\n");
        return 2;
    }
    lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        check(0, "dlopen %s: %s", argv[1], dlerror());
        return done();
    }
    test_lookup(lib);
    if (strcmp(argv[2], "v3") == 0) {
        const char *shim = getenv("V3SHIM_PATH");
        void *sh = shim != NULL ? dlopen(shim, RTLD_NOW | RTLD_NOLOAD) : NULL;
        const char *fs = getenv("V3SHIM_FORK_SAFE");
        fork_safe = fs != NULL && strcmp(fs, "1") == 0;
        *(void **)&shim_count = sh != NULL ? dlsym(sh, "v3shim_count") : NULL;
        check(shim_count != NULL, "the vendor is the 3.0 shim, loaded by the front (%s)", shim ? shim : "V3SHIM_PATH unset");
        test_v3();
    } else {
        test_v240();
    }
    return done();
}
