/*
 * front_bench.c - what the front module adds to a forwarded call.
 *
 *   front_bench VENDOR FRONT [--json FILE] [--iterations N] [--rounds R] [--name NAME] [--module MODULE]
 *
 * One process loads SoftHSM2 (VENDOR) directly and build/libhaext-pkcs11.so
 * (FRONT, whose configuration names the same SoftHSM2: the same instance)
 * and opens one session on token m00 through the front (so that its table
 * knows it). It times C_GetSessionInfo, and C_Sign (HMAC-SHA256 over 32
 * bytes; C_SignInit untimed), on that session through three paths: the
 * vendor's list directly; a bare C trampoline in this program (one more
 * call frame, no bookkeeping: what any forwarding module costs at least);
 * and the front. Each call is timed alone with CLOCK_MONOTONIC, in R
 * rounds whose path order rotates. It prints, and appends to FILE, one JSON
 * line per function: p50 and p99 per path in ns, and the medians over the
 * rounds of the per-round p50 differences (front - direct, front -
 * trampoline). --name names the vendor in the output (default SoftHSM2);
 * with "null" (test/bench/null_vendor.c, which answers at once) the check
 * that both paths share one initialized instance is skipped. --module names
 * FRONT (default libhaext-pkcs11): run.sh also passes the reference
 * modules of test/bench/bare_module.c as FRONT.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static long long pct(const long long *v, long n, double p)
{
    long i = (long)(p / 100.0 * (double)n + 0.999999) - 1;
    if (i < 0)
        i = 0;
    if (i >= n)
        i = n - 1;
    return v[i];
}

static CK_FUNCTION_LIST_PTR load(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList gfl;
    CK_FUNCTION_LIST_PTR l = NULL;
    if (h == NULL || (gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList")) == NULL || gfl(&l) != CKR_OK) {
        fprintf(stderr, "front_bench: cannot load %s: %s\n", path, h == NULL ? dlerror() : "C_GetFunctionList");
        exit(2);
    }
    return l;
}

static CK_SLOT_ID slot_m00(CK_FUNCTION_LIST_PTR l)
{
    CK_SLOT_ID s[16];
    CK_ULONG n = 16, i;
    CK_TOKEN_INFO ti;
    if (l->C_GetSlotList(CK_TRUE, s, &n) == CKR_OK)
        for (i = 0; i < n; i++)
            if (l->C_GetTokenInfo(s[i], &ti) == CKR_OK && memcmp(ti.label, "m00 ", 4) == 0)
                return s[i];
    fprintf(stderr, "front_bench: no token m00\n");
    exit(2);
}

enum { GET_SESSION_INFO, SIGN };

struct path {
    CK_FUNCTION_LIST_PTR l;
    CK_SESSION_HANDLE s;
};

static CK_OBJECT_HANDLE key;

/* The bare trampoline: the vendor's function through one more frame. */
static CK_FUNCTION_LIST_PTR vendor;
static CK_FUNCTION_LIST tramp_list;

__attribute__((noinline)) static CK_RV tramp_info(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR p)
{
    CK_RV rv = vendor->C_GetSessionInfo(h, p);
    if (rv == CKR_DEVICE_ERROR)
        vendor = *(CK_FUNCTION_LIST_PTR volatile *)&vendor;
    return rv;
}

__attribute__((noinline)) static CK_RV tramp_sign(CK_SESSION_HANDLE h, CK_BYTE_PTR d, CK_ULONG n, CK_BYTE_PTR s,
                                                  CK_ULONG_PTR sn)
{
    CK_RV rv = vendor->C_Sign(h, d, n, s, sn);
    if (rv == CKR_DEVICE_ERROR)
        vendor = *(CK_FUNCTION_LIST_PTR volatile *)&vendor;
    return rv;
}

/* n timed calls of kind on path p into out; 0, or -1 when a call failed. */
static int run(struct path *p, int kind, long n, long long *out)
{
    CK_SESSION_INFO si;
    CK_MECHANISM mech = {CKM_SHA256_HMAC, NULL, 0};
    CK_BYTE data[32] = {1}, mac[32];
    long i;
    for (i = 0; i < n; i++) {
        long long t0;
        CK_RV rv;
        if (kind == GET_SESSION_INFO) {
            t0 = now_ns();
            rv = p->l->C_GetSessionInfo(p->s, &si);
            out[i] = now_ns() - t0;
        } else {
            CK_ULONG len = sizeof mac;
            if (p->l->C_SignInit(p->s, &mech, key) != CKR_OK)
                return -1;
            t0 = now_ns();
            rv = p->l->C_Sign(p->s, data, sizeof data, mac, &len);
            out[i] = now_ns() - t0;
        }
        if (rv != CKR_OK)
            return -1;
    }
    return 0;
}

#define PATHS 3
static const char *path_name[PATHS] = {"direct", "trampoline", "front"};

static const char *vendor_name = "SoftHSM2";
static const char *module_name = "libhaext-pkcs11";

static void measure(const char *name, int kind, struct path *paths, long iters, int rounds, FILE *json)
{
    long per = iters / rounds, r, total = per * rounds;
    long long *v[PATHS], *dfront, *dtramp, p50[PATHS], p99[PATHS], added, over_tramp;
    int k;
    dfront = malloc(sizeof(long long) * (size_t)rounds);
    dtramp = malloc(sizeof(long long) * (size_t)rounds);
    for (k = 0; k < PATHS; k++)
        if ((v[k] = malloc(sizeof(long long) * (size_t)total)) == NULL || dfront == NULL || dtramp == NULL)
            exit(2);
    for (k = 0; k < PATHS; k++)
        run(&paths[k], kind, per / 10 + 1, v[k]); /* warm up */
    for (r = 0; r < rounds; r++) {
        long long m[PATHS];
        for (k = 0; k < PATHS; k++) {
            int x = (int)((k + r) % PATHS);
            if (run(&paths[x], kind, per, v[x] + r * per) != 0) {
                fprintf(stderr, "front_bench: %s through the %s path failed\n", name, path_name[x]);
                exit(1);
            }
        }
        for (k = 0; k < PATHS; k++) {
            qsort(v[k] + r * per, (size_t)per, sizeof(long long), cmp_ll);
            m[k] = pct(v[k] + r * per, per, 50);
        }
        dfront[r] = m[2] - m[0];
        dtramp[r] = m[2] - m[1];
    }
    for (k = 0; k < PATHS; k++) {
        qsort(v[k], (size_t)total, sizeof(long long), cmp_ll);
        p50[k] = pct(v[k], total, 50);
        p99[k] = pct(v[k], total, 99);
    }
    qsort(dfront, (size_t)rounds, sizeof(long long), cmp_ll);
    qsort(dtramp, (size_t)rounds, sizeof(long long), cmp_ll);
    added = pct(dfront, rounds, 50);
    over_tramp = pct(dtramp, rounds, 50);
    printf("%s %-16s p50/p99 ns: direct %lld/%lld, trampoline %lld/%lld, %s %lld/%lld; added by %s %+lld "
           "ns (%+lld ns over the bare trampoline); %ld calls per path in %d rounds\n",
           vendor_name, name, p50[0], p99[0], p50[1], p99[1], module_name, p50[2], p99[2], module_name, added,
           over_tramp, total, rounds);
    if (json != NULL)
        fprintf(json,
                "{\"scenario\":\"front_forwarding\",\"module\":\"%s\",\"vendor\":\"%s\",\"call\":\"%s\","
                "\"samples\":%ld,\"rounds\":%d,"
                "\"direct_p50_ns\":%lld,\"direct_p99_ns\":%lld,\"trampoline_p50_ns\":%lld,\"trampoline_p99_ns\":%lld,"
                "\"front_p50_ns\":%lld,\"front_p99_ns\":%lld,\"added_p50_ns\":%lld,\"over_trampoline_p50_ns\":%lld}\n",
                module_name, vendor_name, name, total, rounds, p50[0], p99[0], p50[1], p99[1], p50[2], p99[2], added,
                over_tramp);
    for (k = 0; k < PATHS; k++)
        free(v[k]);
    free(dfront);
    free(dtramp);
}

int main(int argc, char **argv)
{
    const char *json_path = NULL;
    long iters = 400000;
    int rounds = 200, i;
    FILE *json = NULL;
    struct path paths[PATHS], direct, front;
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0};
    CK_ULONG klen = 32;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {{CKA_VALUE_LEN, &klen, sizeof klen}, {CKA_SIGN, &yes, sizeof yes}};
    CK_SLOT_ID slot;
    CK_RV rv;

    if (argc < 3) {
        fprintf(stderr, "usage: front_bench VENDOR FRONT [--json FILE] [--iterations N] [--rounds R] [--name NAME] "
                        "[--module MODULE]\n");
        return 2;
    }
    for (i = 3; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--json") == 0)
            json_path = argv[i + 1];
        else if (strcmp(argv[i], "--iterations") == 0)
            iters = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--name") == 0)
            vendor_name = argv[i + 1];
        else if (strcmp(argv[i], "--module") == 0)
            module_name = argv[i + 1];
    }
    if (rounds < 1 || iters < rounds) {
        fprintf(stderr, "front_bench: bad --iterations/--rounds\n");
        return 2;
    }
    direct.l = load(argv[1]);
    front.l = load(argv[2]);
    if (front.l == direct.l) {
        fprintf(stderr, "front_bench: %s did not load the front\n", argv[2]);
        return 2;
    }
    rv = front.l->C_Initialize(NULL);
    if (rv != CKR_OK ||
        (direct.l->C_Initialize(NULL) != CKR_CRYPTOKI_ALREADY_INITIALIZED && strcmp(vendor_name, "null") != 0)) {
        fprintf(stderr, "front_bench: the front and the vendor must share one SoftHSM2 instance (0x%lx)\n", rv);
        return 2;
    }
    slot = slot_m00(direct.l);
    /* One session, opened through the front (so its table knows it), used
     * by both paths: the vendor does the same work either way. */
    if (front.l->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &front.s) != CKR_OK ||
        (direct.s = front.s) == CK_INVALID_HANDLE ||
        direct.l->C_Login(direct.s, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4) != CKR_OK ||
        direct.l->C_GenerateKey(direct.s, &gen, tmpl, 2, &key) != CKR_OK) {
        fprintf(stderr, "front_bench: session, login or key failed\n");
        return 2;
    }
    if (json_path != NULL && (json = fopen(json_path, "a")) == NULL) {
        perror(json_path);
        return 2;
    }
    vendor = direct.l;
    tramp_list = *direct.l;
    tramp_list.C_GetSessionInfo = tramp_info;
    tramp_list.C_Sign = tramp_sign;
    paths[0] = direct;
    paths[1] = (struct path){&tramp_list, direct.s};
    paths[2] = front;
    measure("C_GetSessionInfo", GET_SESSION_INFO, paths, iters, rounds, json);
    measure("C_Sign", SIGN, paths, iters / 10, rounds, json);
    if (json != NULL)
        fclose(json);
    front.l->C_Finalize(NULL);
    return 0;
}
