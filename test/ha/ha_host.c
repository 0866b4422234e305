/*
 * ha_host.c - a host of the HA slot (test/ha/run.sh): loads a PKCS#11
 * module with dlopen, as applications do, logs in to a slot and signs.
 *
 *   ha_host MODULE SLOT KEYDIR storm SECONDS THREADS
 *       THREADS threads, each with its own session, sign random data for
 *       SECONDS alternately with the RSA key (CKM_SHA256_RSA_PKCS) and the
 *       EC key (CKM_ECDSA over a SHA-256 digest), and verify every
 *       signature with the public keys in KEYDIR (OpenSSL). Prints
 *       "ops N errors N bad N", the worst latency and p99 per second, and
 *       the first errors.
 *   ha_host MODULE SLOT KEYDIR hold single|multi
 *       starts one signature (C_SignInit, and for multi two C_SignUpdate),
 *       prints "held", waits for a line on stdin (the script kills the
 *       member meanwhile), finishes it and verifies it: "done rv 0x.. ok".
 *   ha_host MODULE SLOT KEYDIR login PIN
 *       one C_Login: "login rv 0x..".
 *   ha_host MODULE SLOT KEYDIR lifecycle ROUNDS [nofork]
 *       with HA-slot sessions open: C_Finalize/C_Initialize, fork (the child
 *       initializes and signs; not with nofork: SoftHSM2 cannot be
 *       initialized again in a fork child, with or without the front), and
 *       dlclose/dlopen, ROUNDS times; prints the process's fds and threads
 *       before and after.
 * Every mode ends with the HA slot's report (CA_HAExtGetHASlotReport) when
 * the module has it.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST_PTR f;
static void *lib;
static CK_SLOT_ID slot;
static EVP_PKEY *rsa_pub, *ec_pub;
static const char *module;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int load(void)
{
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_RV rv;
    lib = dlopen(module, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL || (gfl = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(lib, "C_GetFunctionList")) == NULL ||
        gfl(&f) != CKR_OK) {
        fprintf(stderr, "ha_host: cannot load %s: %s\n", module, dlerror());
        return -1;
    }
    rv = f->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        fprintf(stderr, "ha_host: C_Initialize: 0x%lx\n", rv);
        return -1;
    }
    return 0;
}

static CK_SESSION_HANDLE open_session(void)
{
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK)
        fprintf(stderr, "ha_host: C_OpenSession: 0x%lx\n", rv);
    return h;
}

static CK_OBJECT_HANDLE find_key(CK_SESSION_HANDLE h, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
    CK_ULONG n = 0;
    if (f->C_FindObjectsInit(h, t, 2) == CKR_OK) {
        f->C_FindObjects(h, &o, 1, &n);
        f->C_FindObjectsFinal(h);
    }
    return n == 1 ? o : CK_INVALID_HANDLE;
}

static EVP_PKEY *read_pub(const char *dir, const char *name)
{
    char path[4096];
    FILE *fp;
    EVP_PKEY *k;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if ((fp = fopen(path, "r")) == NULL)
        return NULL;
    k = PEM_read_PUBKEY(fp, NULL, NULL, NULL);
    fclose(fp);
    return k;
}

/* Verifies sig over data: RSA PKCS#1 v1.5 SHA-256, or ECDSA (raw r||s) over
 * SHA-256(data). */
static int verify(int ec, const unsigned char *data, size_t n, const unsigned char *sig, size_t siglen)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned char der[80];
    const unsigned char *s = sig;
    size_t slen = siglen;
    int ok;
    if (ec) {
        /* r||s to DER: SEQUENCE { INTEGER r, INTEGER s } */
        ECDSA_SIG *es = ECDSA_SIG_new();
        unsigned char *p = der;
        ECDSA_SIG_set0(es, BN_bin2bn(sig, (int)siglen / 2, NULL), BN_bin2bn(sig + siglen / 2, (int)siglen / 2, NULL));
        slen = (size_t)i2d_ECDSA_SIG(es, &p);
        ECDSA_SIG_free(es);
        s = der;
    }
    ok = EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, ec ? ec_pub : rsa_pub) == 1 &&
         EVP_DigestVerify(c, s, slen, data, n) == 1;
    EVP_MD_CTX_free(c);
    return ok;
}

/* One signature of data with key (ec: the EC key) on session h. */
static CK_RV sign(CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key, int ec, const unsigned char *data, size_t n,
                  unsigned char *sig, CK_ULONG *siglen)
{
    CK_MECHANISM m = {ec ? CKM_ECDSA : CKM_SHA256_RSA_PKCS, NULL, 0};
    unsigned char dg[32];
    CK_RV rv = f->C_SignInit(h, &m, key);
    if (rv != CKR_OK)
        return rv;
    if (ec) {
        SHA256(data, n, dg);
        return f->C_Sign(h, dg, 32, sig, siglen);
    }
    return f->C_Sign(h, (CK_BYTE_PTR)data, n, sig, siglen);
}

#define MAXREC 400000

struct worker {
    pthread_t t;
    double until, t0;
    CK_OBJECT_HANDLE rsa, ec;
    long ops, errors, bad, nrec;
    CK_RV first_error;
    float *lat; /* seconds */
    float *at;  /* since t0 */
};

static void *storm_thread(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE h = open_session();
    unsigned char data[64], sig[512];
    if (h == CK_INVALID_HANDLE) {
        w->errors++;
        return NULL;
    }
    for (long i = 0; now() < w->until; i++) {
        CK_ULONG siglen = sizeof sig;
        int ec = (int)(i & 1);
        double t = now();
        CK_RV rv;
        RAND_bytes(data, sizeof data);
        rv = sign(h, ec ? w->ec : w->rsa, ec, data, sizeof data, sig, &siglen);
        if (w->nrec < MAXREC) {
            w->lat[w->nrec] = (float)(now() - t);
            w->at[w->nrec++] = (float)(t - w->t0);
        }
        w->ops++;
        if (rv != CKR_OK) {
            if (w->errors++ == 0)
                w->first_error = rv;
        } else if (!verify(ec, data, sizeof data, sig, siglen)) {
            w->bad++;
        }
    }
    f->C_CloseSession(h);
    return NULL;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* p99 and max per second of the run, from every worker's records. */
static void per_second(struct worker *w, int nw, int seconds)
{
    float *buf = malloc(sizeof(float) * MAXREC * (size_t)nw);
    for (int s = 0; s < seconds; s++) {
        long n = 0;
        for (int i = 0; i < nw; i++)
            for (long k = 0; k < w[i].nrec; k++)
                if (w[i].at[k] >= s && w[i].at[k] < s + 1)
                    buf[n++] = w[i].lat[k];
        if (n == 0) {
            printf("second %d ops 0\n", s);
            continue;
        }
        qsort(buf, (size_t)n, sizeof *buf, cmp_float);
        printf("second %d ops %ld p99_ms %.3f max_ms %.3f\n", s, n, buf[(n * 99) / 100] * 1e3, buf[n - 1] * 1e3);
    }
    free(buf);
}

static int storm(int seconds, int threads)
{
    CK_SESSION_HANDLE h = open_session();
    struct worker *w = calloc((size_t)threads, sizeof *w);
    long ops = 0, errors = 0, bad = 0;
    CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4), first = CKR_OK;
    double t0 = now();
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        printf("login rv 0x%lx\n", rv);
        return 1;
    }
    for (int i = 0; i < threads; i++) {
        w[i].rsa = find_key(h, "ha-rsa");
        w[i].ec = find_key(h, "ha-ec");
        w[i].t0 = t0;
        w[i].until = t0 + seconds;
        w[i].lat = malloc(sizeof(float) * MAXREC);
        w[i].at = malloc(sizeof(float) * MAXREC);
        pthread_create(&w[i].t, NULL, storm_thread, &w[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].t, NULL);
        ops += w[i].ops;
        errors += w[i].errors;
        bad += w[i].bad;
        if (first == CKR_OK && w[i].first_error != CKR_OK)
            first = w[i].first_error;
    }
    per_second(w, threads, seconds);
    printf("ops %ld errors %ld bad %ld first_error 0x%lx\n", ops, errors, bad, first);
    f->C_CloseSession(h);
    return errors != 0 || bad != 0;
}

static void report(void);

static int hold(const char *how)
{
    CK_SESSION_HANDLE h = open_session();
    CK_MECHANISM m = {CKM_SHA256_RSA_PKCS, NULL, 0};
    unsigned char data[96], sig[512];
    CK_ULONG siglen = sizeof sig;
    CK_OBJECT_HANDLE key;
    char line[64];
    int multi = strcmp(how, "multi") == 0;
    CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4);
    if (rv != CKR_OK)
        return printf("login rv 0x%lx\n", rv), 1;
    key = find_key(h, "ha-rsa");
    RAND_bytes(data, sizeof data);
    rv = f->C_SignInit(h, &m, key);
    if (rv == CKR_OK && multi)
        rv = f->C_SignUpdate(h, data, 32);
    if (rv == CKR_OK && multi)
        rv = f->C_SignUpdate(h, data + 32, 32);
    printf("held rv 0x%lx\n", rv);
    report();
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL)
        return 1;
    if (multi) {
        rv = f->C_SignUpdate(h, data + 64, 32);
        if (rv == CKR_OK)
            rv = f->C_SignFinal(h, sig, &siglen);
    } else {
        rv = f->C_Sign(h, data, sizeof data, sig, &siglen);
    }
    printf("done rv 0x%lx %s\n", rv, rv == CKR_OK && verify(0, data, sizeof data, sig, siglen) ? "ok" : "BAD");
    return rv != CKR_OK;
}

static int login_once(const char *pin)
{
    CK_SESSION_HANDLE h = open_session();
    CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
    printf("login rv 0x%lx\n", rv);
    return 0;
}

static int count_dir(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Opens a session, logs in, signs once: 0 when the signature verifies. */
static int one_signature(void)
{
    CK_SESSION_HANDLE h = open_session();
    unsigned char data[32] = {1}, sig[512];
    CK_ULONG siglen = sizeof sig;
    CK_RV rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4);
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        return 1;
    rv = sign(h, find_key(h, "ha-ec"), 1, data, sizeof data, sig, &siglen);
    return rv != CKR_OK || !verify(1, data, sizeof data, sig, siglen);
}

static int lifecycle(int rounds, int with_fork)
{
    int fails = 0, fd0, th0;
    fails += one_signature();
    fd0 = count_dir("/proc/self/fd");
    th0 = count_dir("/proc/self/task");
    for (int r = 0; r < rounds; r++) {
        pid_t pid;
        int st = 0;
        f->C_Finalize(NULL); /* with the HA session of one_signature open */
        if (f->C_Initialize(&(CK_C_INITIALIZE_ARGS){.flags = CKF_OS_LOCKING_OK}) != CKR_OK)
            fails++;
        fails += one_signature();
        pid = with_fork ? fork() : -1;
        if (pid == 0) {
            if (f->C_Initialize(&(CK_C_INITIALIZE_ARGS){.flags = CKF_OS_LOCKING_OK}) != CKR_OK)
                _exit(2);
            _exit(one_signature());
        }
        if (pid > 0) {
            waitpid(pid, &st, 0);
            fails += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
        }
        f->C_Finalize(NULL);
        dlclose(lib);
        if (load() != 0)
            return 1;
        fails += one_signature();
    }
    printf("lifecycle rounds %d fails %d fds %d %d threads %d %d\n", rounds, fails, fd0,
           count_dir("/proc/self/fd"), th0, count_dir("/proc/self/task"));
    /* The HA sessions closed: every session of the front's on the members
     * with them (pkcs11-spy counts, test/ha/run.sh). */
    f->C_CloseAllSessions(slot);
    return fails != 0;
}

static void report(void)
{
    CK_ULONG (*rep)(CK_SLOT_ID, char *, CK_ULONG) =
        (CK_ULONG(*)(CK_SLOT_ID, char *, CK_ULONG))dlsym(lib, "CA_HAExtGetHASlotReport");
    char buf[8192];
    if (rep != NULL && rep(slot, buf, sizeof buf) > 0)
        fputs(buf, stdout);
}

int main(int argc, char **argv)
{
    int rc = 2;
    if (argc < 5) {
        fprintf(stderr, "usage: ha_host MODULE SLOT KEYDIR storm|hold|login|lifecycle ARGS\n");
        return 2;
    }
    module = argv[1];
    slot = strtoul(argv[2], NULL, 0);
    rsa_pub = read_pub(argv[3], "rsa.pub.pem");
    ec_pub = read_pub(argv[3], "ec.pub.pem");
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (rsa_pub == NULL || ec_pub == NULL || load() != 0)
        return 2;
    if (strcmp(argv[4], "storm") == 0 && argc == 7)
        rc = storm(atoi(argv[5]), atoi(argv[6]));
    else if (strcmp(argv[4], "hold") == 0 && argc == 6)
        rc = hold(argv[5]);
    else if (strcmp(argv[4], "login") == 0 && argc == 6)
        rc = login_once(argv[5]);
    else if (strcmp(argv[4], "lifecycle") == 0 && (argc == 6 || argc == 7))
        rc = lifecycle(atoi(argv[5]), argc == 6);
    report();
    return rc;
}
