/*
 * provider_host.c - an OpenSSL 3 application signing with keys in the
 * token through pkcs11-provider (test/consumers/eco.sh), run once with the
 * vendor's module and once with the front (OPENSSL_CONF names the
 * provider and the module), its standard output compared.
 *
 *   provider_host TOKEN LOOPS RSA_PUB.pem EC_PUB.pem [CA_LIBRARY SLOT]
 *
 * Loads "pkcs11:token=TOKEN;object=rsa|ec;type=private" through OSSL_STORE
 * and makes LOOPS signatures of each kind (RSA PKCS#1 v1.5, RSA-PSS, ECDSA,
 * all SHA-256), each verified with the public key from the PEM file by
 * OpenSSL's default provider. Standard output: the counts, and a digest of
 * the PKCS#1 v1.5 signatures (deterministic). With ECO_NO_PSS set (a module
 * without CKM_SHA256_RSA_PKCS_PSS: p11-kit 0.24's proxy), no RSA-PSS.
 *
 * With CA_LIBRARY and SLOT: once the provider has loaded the module, a
 * thread finds the front in the process (dlopen RTLD_NOLOAD: the very
 * instance pkcs11-provider loaded) and calls its CA_GetCurrentHAState on
 * SLOT every 2 ms while the signatures go on; "ca: calls=N ok=N" on
 * standard error (ok: CKR_OK and every member CKR_OK).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/store.h>

#include "cryptoki_ha.h"

static const unsigned char msg[] = "libhaext ecosystem test message";
static CK_RV (*ca_fn)(CK_SLOT_ID, CK_HA_STATE_PTR);
static CK_SLOT_ID ca_slot;
static volatile int ca_stop;

static void *ca_thread(void *arg)
{
    long calls = 0, ok = 0;
    (void)arg;
    while (!ca_stop) {
        CK_HA_STATUS st;
        CK_ULONG i;
        int all = ca_fn(ca_slot, &st) == CKR_OK && st.listSize > 0;
        for (i = 0; all && i < st.listSize; i++)
            all = st.memberList[i].memberStatus == CKR_OK;
        ok += all;
        calls++;
        usleep(2000);
    }
    fprintf(stderr, "ca: calls=%ld ok=%ld\n", calls, ok);
    return NULL;
}

static EVP_PKEY *load_uri(const char *uri)
{
    OSSL_STORE_CTX *st = OSSL_STORE_open(uri, NULL, NULL, NULL, NULL);
    EVP_PKEY *k = NULL;
    while (st != NULL && k == NULL && !OSSL_STORE_eof(st)) {
        OSSL_STORE_INFO *info = OSSL_STORE_load(st);
        if (info != NULL && OSSL_STORE_INFO_get_type(info) == OSSL_STORE_INFO_PKEY)
            k = OSSL_STORE_INFO_get1_PKEY(info);
        OSSL_STORE_INFO_free(info);
    }
    OSSL_STORE_close(st);
    if (k == NULL) {
        printf("cannot load %s\n", uri);
        ERR_print_errors_fp(stdout);
        exit(2);
    }
    return k;
}

static EVP_PKEY *load_pem(const char *path)
{
    FILE *f = fopen(path, "r");
    EVP_PKEY *k = f != NULL ? PEM_read_PUBKEY(f, NULL, NULL, NULL) : NULL;
    if (f != NULL)
        fclose(f);
    if (k == NULL) {
        printf("cannot read %s\n", path);
        exit(2);
    }
    return k;
}

/* One signature with prv (pss: RSA-PSS), verified with pub by the default
 * provider; the signature is folded into *fold. 1 when it verifies. */
static int sign_verify(EVP_PKEY *prv, EVP_PKEY *pub, int pss, unsigned long long *fold)
{
    unsigned char sig[512];
    size_t siglen = sizeof sig, k;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc = NULL;
    int good = 0;
    if (EVP_DigestSignInit_ex(c, &pc, "SHA256", NULL, NULL, prv, NULL) == 1 &&
        (!pss || EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1) &&
        EVP_DigestSign(c, sig, &siglen, msg, sizeof msg - 1) == 1) {
        for (k = 0; k < siglen; k++)
            *fold = (*fold ^ sig[k]) * 1099511628211ULL;
        EVP_MD_CTX_free(c);
        c = EVP_MD_CTX_new();
        if (EVP_DigestVerifyInit_ex(c, &pc, "SHA256", NULL, "provider=default", pub, NULL) == 1 &&
            (!pss || EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1) &&
            EVP_DigestVerify(c, sig, siglen, msg, sizeof msg - 1) == 1)
            good = 1;
    }
    if (!good)
        ERR_print_errors_fp(stderr);
    EVP_MD_CTX_free(c);
    return good;
}

int main(int argc, char **argv)
{
    char uri[256];
    unsigned long long fold = 14695981039346656037ULL, scratch = 0;
    long loops, i, rsa = 0, pss = 0, ec = 0;
    EVP_PKEY *rsa_prv, *ec_prv, *rsa_pub, *ec_pub;
    const char *np = getenv("ECO_NO_PSS");
    int no_pss = np != NULL && *np != '\0';
    pthread_t t;

    if (argc != 5 && argc != 7) {
        fprintf(stderr, "usage: provider_host TOKEN LOOPS RSA_PUB.pem EC_PUB.pem [CA_LIBRARY SLOT]\n");
        return 2;
    }
    loops = atol(argv[2]);
    snprintf(uri, sizeof uri, "pkcs11:token=%s;object=rsa;type=private", argv[1]);
    rsa_prv = load_uri(uri);
    snprintf(uri, sizeof uri, "pkcs11:token=%s;object=ec;type=private", argv[1]);
    ec_prv = load_uri(uri);
    rsa_pub = load_pem(argv[3]);
    ec_pub = load_pem(argv[4]);
    if (argc == 7) {
        void *h = dlopen(argv[5], RTLD_NOW | RTLD_NOLOAD);
        ca_fn = h != NULL ? (CK_RV(*)(CK_SLOT_ID, CK_HA_STATE_PTR))dlsym(h, "CA_GetCurrentHAState") : NULL;
        if (ca_fn == NULL) {
            printf("ca: pkcs11-provider has not loaded %s\n", argv[5]);
            return 2;
        }
        ca_slot = strtoul(argv[6], NULL, 0);
        pthread_create(&t, NULL, ca_thread, NULL);
    }
    for (i = 0; i < loops; i++) {
        rsa += sign_verify(rsa_prv, rsa_pub, 0, &fold);
        pss += no_pss ? 1 : sign_verify(rsa_prv, rsa_pub, 1, &scratch);
        ec += sign_verify(ec_prv, ec_pub, 0, &scratch);
    }
    if (ca_fn != NULL) {
        ca_stop = 1;
        pthread_join(t, NULL);
    }
    printf("rsa pkcs1: %ld signatures, %ld verified, fold %016llx\n", loops, rsa, fold);
    if (no_pss)
        printf("rsa pss: not tried (ECO_NO_PSS: the module offers no SHA256-RSA-PKCS-PSS)\n");
    else
        printf("rsa pss: %ld signatures, %ld verified\n", loops, pss);
    printf("ecdsa: %ld signatures, %ld verified\n", loops, ec);
    EVP_PKEY_free(rsa_prv);
    EVP_PKEY_free(ec_prv);
    EVP_PKEY_free(rsa_pub);
    EVP_PKEY_free(ec_pub);
    printf("done\n");
    return rsa == loops && pss == loops && ec == loops ? 0 : 1;
}
