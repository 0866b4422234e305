/*
 * engine_host.c - a host that signs through OpenSSL's pkcs11 engine
 * (libengine-pkcs11-openssl, libp11), run once with the vendor's module and
 * once with the front (test/consumers/run.sh), its standard output
 * compared.
 *
 *   engine_host MODULE SCENARIO LOOPS [CA_LIBRARY]
 *
 * SCENARIO: sign (every token m00.., RSA-SHA256 with key "k"), fork (sign,
 * fork, sign in the child, which libp11 re-initializes, then in the
 * parent). With CA_LIBRARY (the front), a thread calls
 * CA_GetCurrentHAState on the group's first member (ENGINE_CA_SLOT) from
 * the second round on and writes its tally to standard error. Signatures
 * are printed as a hash.
 */
#define _GNU_SOURCE
#define OPENSSL_SUPPRESS_DEPRECATED
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/engine.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "cryptoki_ha.h"

static const char msg[] = "libhaext front module test message";

static ENGINE *load_engine(const char *module)
{
    const char *so = getenv("ENGINE_PKCS11_SO");
    ENGINE *e;
    ENGINE_load_dynamic();
    e = ENGINE_by_id("dynamic");
    if (e == NULL || !ENGINE_ctrl_cmd_string(e, "SO_PATH", so, 0) || !ENGINE_ctrl_cmd_string(e, "ID", "pkcs11", 0) ||
        !ENGINE_ctrl_cmd_string(e, "LIST_ADD", "1", 0) || !ENGINE_ctrl_cmd_string(e, "LOAD", NULL, 0) ||
        !ENGINE_ctrl_cmd_string(e, "MODULE_PATH", module, 0) || !ENGINE_ctrl_cmd_string(e, "PIN", "1234", 0) ||
        !ENGINE_init(e)) {
        printf("engine: cannot load pkcs11 from %s\n", so != NULL ? so : "(ENGINE_PKCS11_SO unset)");
        ERR_print_errors_fp(stdout);
        exit(2);
    }
    return e;
}

/* One signature with the key "k" of token label: "ok HASH" or the error. */
static void sign_once(ENGINE *e, const char *label, char *out, size_t outlen)
{
    char uri[128];
    unsigned char sig[1024], md[32];
    size_t siglen = sizeof sig;
    unsigned int mdlen = 0;
    EVP_PKEY *key;
    EVP_MD_CTX *ctx;
    int i;
    snprintf(uri, sizeof uri, "pkcs11:token=%s;object=k;type=private", label);
    key = ENGINE_load_private_key(e, uri, NULL, NULL);
    if (key == NULL) {
        snprintf(out, outlen, "no key");
        ERR_clear_error();
        return;
    }
    ctx = EVP_MD_CTX_new();
    if (EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key) != 1 ||
        EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)msg, sizeof msg - 1) != 1) {
        snprintf(out, outlen, "sign failed");
        ERR_clear_error();
    } else {
        EVP_Digest(sig, siglen, md, &mdlen, EVP_sha256(), NULL);
        snprintf(out, outlen, "ok ");
        for (i = 0; i < 8; i++)
            snprintf(out + 3 + 2 * i, outlen - 3 - 2 * i, "%02x", md[i]);
    }
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(key);
}

static void sign_all(ENGINE *e, const char *tag, int loops)
{
    const char *labels[] = {"m00", "m01", "m02"};
    int n = atoi(getenv("ENGINE_TOKENS") != NULL ? getenv("ENGINE_TOKENS") : "1"), t, i;
    for (t = 0; t < n && t < 3; t++) {
        char first[64] = "", r[64];
        int same = 0;
        for (i = 0; i < loops; i++) {
            sign_once(e, labels[t], r, sizeof r);
            if (i == 0)
                snprintf(first, sizeof first, "%s", r);
            if (strcmp(r, first) == 0)
                same++;
        }
        printf("%s sign %s x%d: %s (%d the same)\n", tag, labels[t], loops, first, same);
        fflush(stdout);
    }
}

/* The monitor thread: CA_GetCurrentHAState on the front, meanwhile. */
static volatile int ca_stop;
static CK_SLOT_ID ca_slot;
static CK_RV (*ca_fn)(CK_SLOT_ID, CK_HA_STATE_PTR);

static void *ca_thread(void *arg)
{
    long calls = 0, ok = 0;
    (void)arg;
    while (!ca_stop) {
        CK_HA_STATUS st;
        if (ca_fn(ca_slot, &st) == CKR_OK)
            ok++;
        calls++;
        usleep(2000);
    }
    fprintf(stderr, "ca: calls=%ld ok=%ld\n", calls, ok);
    return NULL;
}

int main(int argc, char **argv)
{
    ENGINE *e;
    pthread_t t;
    int loops, with_ca = argc > 4;
    if (argc < 4) {
        fprintf(stderr, "usage: engine_host MODULE sign|fork LOOPS [CA_LIBRARY]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    loops = atoi(argv[3]);
    e = load_engine(argv[1]);
    sign_all(e, "first", loops);
    if (with_ca) {
        /* Started once the host has initialized the module (libp11 loads
         * it on the first key): the same file, so one copy. */
        void *h = dlopen(argv[4], RTLD_NOW);
        const char *slot = getenv("ENGINE_CA_SLOT");
        ca_fn = h != NULL ? (CK_RV(*)(CK_SLOT_ID, CK_HA_STATE_PTR))dlsym(h, "CA_GetCurrentHAState") : NULL;
        if (ca_fn == NULL || slot == NULL) {
            printf("ca: no CA_GetCurrentHAState in %s, or ENGINE_CA_SLOT is unset\n", argv[4]);
            return 2;
        }
        ca_slot = strtoul(slot, NULL, 0);
        pthread_create(&t, NULL, ca_thread, NULL);
    }
    sign_all(e, "loop", loops);
    if (strcmp(argv[2], "fork") == 0) {
        int status;
        pid_t pid;
        fflush(stdout);
        pid = fork();
        if (pid == 0) {
            sign_all(e, "child", loops);
            fflush(stdout);
            _exit(0);
        }
        waitpid(pid, &status, 0);
        printf("child exit %d\n", status);
        sign_all(e, "parent", loops);
    }
    if (with_ca) {
        ca_stop = 1;
        pthread_join(t, NULL);
    }
    ENGINE_finish(e);
    ENGINE_free(e);
    printf("done\n");
    return 0;
}
