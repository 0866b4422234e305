/*
 * sign_host.c - a plain C PKCS#11 host for test/consumers/eco.sh: a signing
 * loop, run once with the vendor's module and once with the front, its
 * standard output compared; and the per-operation cost of each.
 *
 *   sign_host MODULE TOKEN LOOPS [CA_LIBRARY]
 *
 * Logs in to the token labelled TOKEN (user PIN 1234) and makes LOOPS
 * RSA-2048 signatures (CKM_SHA256_RSA_PKCS, key "rsa") and LOOPS ECDSA P-256
 * signatures (CKM_ECDSA over a SHA-256 digest, key "ec"), each verified with
 * the token's public key (C_Verify). Standard output: the counts, and a
 * digest of the RSA signatures (PKCS#1 v1.5 is deterministic); standard
 * error: "time rsa-2048 sign us/op=..." and "time ecdsa-p256 sign us/op=...".
 *
 * With CA_LIBRARY (the front, already loaded as MODULE), a thread calls its
 * CA_GetCurrentHAState on the token's slot every 2 ms for as long as the
 * loops run, in the same process, and writes "ca: calls=N ok=N" to
 * standard error (ok: CKR_OK and every member CKR_OK).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cryptoki_ha.h"

static CK_FUNCTION_LIST_PTR F;
static CK_SESSION_HANDLE S;
static CK_SLOT_ID slot;
static CK_RV (*ca_fn)(CK_SLOT_ID, CK_HA_STATE_PTR);
static volatile int ca_stop;

static void die(const char *what, CK_RV rv)
{
    printf("%s: CK_RV 0x%lx\n", what, rv);
    exit(2);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

/* The slot of the token labelled want (blank-padded to 32). */
static CK_SLOT_ID find_slot(const char *want)
{
    CK_SLOT_ID list[64];
    CK_ULONG n = 64, i;
    char label[33];
    CK_RV rv = F->C_GetSlotList(CK_TRUE, list, &n);
    if (rv != CKR_OK)
        die("C_GetSlotList", rv);
    snprintf(label, sizeof label, "%-32s", want);
    for (i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (F->C_GetTokenInfo(list[i], &ti) == CKR_OK && memcmp(ti.label, label, 32) == 0)
            return list[i];
    }
    printf("no token %s\n", want);
    exit(2);
}

static CK_OBJECT_HANDLE find_key(CK_OBJECT_CLASS cls, const char *label)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_ULONG n = 0;
    CK_RV rv = F->C_FindObjectsInit(S, t, 2);
    if (rv != CKR_OK)
        die("C_FindObjectsInit", rv);
    rv = F->C_FindObjects(S, &h, 1, &n);
    F->C_FindObjectsFinal(S);
    if (rv != CKR_OK || n != 1) {
        printf("key %s (class %lu) not found\n", label, cls);
        exit(2);
    }
    return h;
}

static void *ca_thread(void *arg)
{
    long calls = 0, ok = 0;
    (void)arg;
    while (!ca_stop) {
        CK_HA_STATUS st;
        CK_ULONG i;
        int all = ca_fn(slot, &st) == CKR_OK && st.listSize > 0;
        for (i = 0; all && i < st.listSize; i++)
            all = st.memberList[i].memberStatus == CKR_OK;
        ok += all;
        calls++;
        usleep(2000);
    }
    fprintf(stderr, "ca: calls=%ld ok=%ld\n", calls, ok);
    return NULL;
}

/* LOOPS signatures with mech and key prv, each verified with pub; the FNV-1a
 * hash of all signatures into *fold. Returns the number verified. */
static long sign_loop(const char *name, CK_MECHANISM_TYPE mech, CK_OBJECT_HANDLE prv, CK_OBJECT_HANDLE pub,
                      const unsigned char *data, CK_ULONG len, long loops, unsigned long long *fold)
{
    CK_MECHANISM m = {mech, NULL, 0};
    double spent = 0;
    long i, good = 0;
    for (i = 0; i < loops; i++) {
        unsigned char sig[512];
        CK_ULONG siglen = sizeof sig, k;
        double t0 = now_us();
        CK_RV rv = F->C_SignInit(S, &m, prv);
        if (rv == CKR_OK)
            rv = F->C_Sign(S, (CK_BYTE_PTR)data, len, sig, &siglen);
        spent += now_us() - t0;
        if (rv != CKR_OK)
            die("C_Sign", rv);
        for (k = 0; k < siglen; k++)
            *fold = (*fold ^ sig[k]) * 1099511628211ULL;
        if (F->C_VerifyInit(S, &m, pub) == CKR_OK && F->C_Verify(S, (CK_BYTE_PTR)data, len, sig, siglen) == CKR_OK)
            good++;
    }
    fprintf(stderr, "time %s sign us/op=%.1f\n", name, spent / loops);
    return good;
}

int main(int argc, char **argv)
{
    static const unsigned char msg[] = "libhaext ecosystem test message";
    unsigned char digest[32];
    unsigned long long rsa_fold = 14695981039346656037ULL, ec_fold = rsa_fold;
    CK_C_INITIALIZE_ARGS ia = {NULL, NULL, NULL, NULL, CKF_OS_LOCKING_OK, NULL};
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    pthread_t t;
    long loops, rsa_ok, ec_ok;
    void *h;
    CK_RV rv;

    if (argc < 4) {
        fprintf(stderr, "usage: sign_host MODULE TOKEN LOOPS [CA_LIBRARY]\n");
        return 2;
    }
    loops = atol(argv[3]);
    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    gfl = h != NULL ? (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(h, "C_GetFunctionList") : NULL;
    if (gfl == NULL || gfl(&F) != CKR_OK) {
        printf("cannot load %s\n", argv[1]);
        return 2;
    }
    if ((rv = F->C_Initialize(&ia)) != CKR_OK)
        die("C_Initialize", rv);
    slot = find_slot(argv[2]);
    if ((rv = F->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &S)) != CKR_OK)
        die("C_OpenSession", rv);
    if ((rv = F->C_Login(S, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4)) != CKR_OK)
        die("C_Login", rv);
    if (argc > 4) {
        void *ca = dlopen(argv[4], RTLD_NOW | RTLD_NOLOAD);
        ca_fn = ca != NULL ? (CK_RV(*)(CK_SLOT_ID, CK_HA_STATE_PTR))dlsym(ca, "CA_GetCurrentHAState") : NULL;
        if (ca_fn == NULL) {
            printf("ca: %s is not loaded, or has no CA_GetCurrentHAState\n", argv[4]);
            return 2;
        }
        pthread_create(&t, NULL, ca_thread, NULL);
    }
    /* A fixed SHA-256-sized digest for CKM_ECDSA (the value does not matter). */
    for (size_t i = 0; i < sizeof digest; i++)
        digest[i] = (unsigned char)(i * 7 + 1);
    rsa_ok = sign_loop("rsa-2048", CKM_SHA256_RSA_PKCS, find_key(CKO_PRIVATE_KEY, "rsa"),
                       find_key(CKO_PUBLIC_KEY, "rsa"), msg, sizeof msg - 1, loops, &rsa_fold);
    ec_ok = sign_loop("ecdsa-p256", CKM_ECDSA, find_key(CKO_PRIVATE_KEY, "ec"), find_key(CKO_PUBLIC_KEY, "ec"),
                      digest, sizeof digest, loops, &ec_fold);
    if (ca_fn != NULL) {
        ca_stop = 1;
        pthread_join(t, NULL);
    }
    printf("rsa-2048: %ld signatures, %ld verified, fold %016llx\n", loops, rsa_ok, rsa_fold);
    printf("ecdsa-p256: %ld signatures, %ld verified\n", loops, ec_ok);
    F->C_Logout(S);
    F->C_CloseSession(S);
    F->C_Finalize(NULL);
    printf("done\n");
    return rsa_ok == loops && ec_ok == loops ? 0 : 1;
}
