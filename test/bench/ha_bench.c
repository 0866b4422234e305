/*
 * ha_bench.c - the HA slot's cost and scaling (make bench, test/bench/ha.sh).
 * One process loads the vendor module and the front (which loads the same
 * vendor: one instance), so a call on the HA slot and the same call on a
 * member's session straight to the vendor run side by side.
 *
 *   ha_bench VENDOR FRONT overhead ITERATIONS
 *       C_SignInit + C_Sign with HMAC-SHA256 (a generic secret made on each
 *       member) and ECDSA P-256 (test/ha/keys.sh's), alternating batches on
 *       the HA slot and on member m00's slot directly; one JSON line per
 *       mechanism: the medians per operation and the difference.
 *   ha_bench VENDOR FRONT scale SECONDS THREADS
 *       THREADS threads signing with HMAC-SHA256 for SECONDS on m00 directly,
 *       then on the HA slot: one JSON line with both throughputs.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#define HA_SLOT 0x48410000UL

static CK_FUNCTION_LIST_PTR vf, ff;
static CK_SLOT_ID m00;

static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static CK_FUNCTION_LIST_PTR load(const char *path)
{
    CK_RV (*gfl)(CK_FUNCTION_LIST_PTR_PTR);
    CK_FUNCTION_LIST_PTR f = NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL || (gfl = (CK_RV(*)(CK_FUNCTION_LIST_PTR_PTR))dlsym(h, "C_GetFunctionList")) == NULL ||
        gfl(&f) != CKR_OK) {
        fprintf(stderr, "ha_bench: cannot load %s\n", path);
        exit(2);
    }
    return f;
}

static CK_OBJECT_HANDLE find(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE h, CK_OBJECT_CLASS cls, const char *label)
{
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
    CK_ULONG n = 0;
    if (f->C_FindObjectsInit(h, t, 2) == CKR_OK) {
        f->C_FindObjects(h, &o, 1, &n);
        f->C_FindObjectsFinal(h);
    }
    return n == 1 ? o : CK_INVALID_HANDLE;
}

/* A session on slot (logged in), with the same HMAC key made on every
 * member (a token object, once). */
static CK_SESSION_HANDLE session(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE h;
    CK_RV rv = f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &h);
    if (rv != CKR_OK) {
        fprintf(stderr, "ha_bench: C_OpenSession(%lu): 0x%lx\n", slot, rv);
        exit(2);
    }
    rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR) "1234", 4);
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
        fprintf(stderr, "ha_bench: C_Login: 0x%lx\n", rv);
        exit(2);
    }
    return h;
}

static void make_hmac_keys(void)
{
    CK_SLOT_ID slots[64];
    CK_ULONG n = 64;
    static unsigned char value[32] = {42};
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE t[] = {{CKA_CLASS, &cls, sizeof cls},     {CKA_KEY_TYPE, &kt, sizeof kt},
                        {CKA_TOKEN, &yes, sizeof yes},     {CKA_SIGN, &yes, sizeof yes},
                        {CKA_ID, "\x03", 1},               {CKA_LABEL, "ha-hmac", 7},
                        {CKA_VALUE, value, sizeof value}, {CKA_PRIVATE, &yes, sizeof yes}};
    vf->C_GetSlotList(CK_TRUE, slots, &n);
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        CK_SESSION_HANDLE h;
        CK_OBJECT_HANDLE o;
        if (vf->C_GetTokenInfo(slots[i], &ti) != CKR_OK || !(ti.flags & CKF_TOKEN_INITIALIZED))
            continue;
        if (memcmp(ti.label, "m00 ", 4) == 0)
            m00 = slots[i];
        h = session(vf, slots[i]);
        if (find(vf, h, CKO_SECRET_KEY, "ha-hmac") == CK_INVALID_HANDLE)
            vf->C_CreateObject(h, t, 8, &o);
        vf->C_CloseSession(h);
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ns per C_SignInit + C_Sign, over k operations. */
static double batch(CK_FUNCTION_LIST_PTR f, CK_SESSION_HANDLE h, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mt, int k)
{
    CK_MECHANISM m = {mt, NULL, 0};
    unsigned char data[32] = {1}, sig[256];
    double t0 = now_ns();
    for (int i = 0; i < k; i++) {
        CK_ULONG n = sizeof sig;
        if (f->C_SignInit(h, &m, key) != CKR_OK || f->C_Sign(h, data, sizeof data, sig, &n) != CKR_OK) {
            fprintf(stderr, "ha_bench: sign failed\n");
            exit(1);
        }
    }
    return (now_ns() - t0) / k;
}

static void overhead(int iterations)
{
    CK_SESSION_HANDLE ha = session(ff, HA_SLOT), d = session(vf, m00), df = session(ff, m00);
    struct {
        const char *name, *label;
        CK_OBJECT_CLASS cls;
        CK_MECHANISM_TYPE mech;
        int k;
    } cases[] = {{"HMAC-SHA256", "ha-hmac", CKO_SECRET_KEY, CKM_SHA256_HMAC, 200},
                 {"ECDSA P-256", "ha-ec", CKO_PRIVATE_KEY, CKM_ECDSA, 20}};
    for (int c = 0; c < 2; c++) {
        CK_OBJECT_HANDLE kh = find(ff, ha, cases[c].cls, cases[c].label), kd = find(vf, d, cases[c].cls, cases[c].label);
        CK_OBJECT_HANDLE kf = find(ff, df, cases[c].cls, cases[c].label);
        int nb = iterations / cases[c].k;
        double *bh = calloc((size_t)nb, sizeof *bh), *bd = calloc((size_t)nb, sizeof *bd), *diff = calloc((size_t)nb, sizeof *diff);
        double *bf = calloc((size_t)nb, sizeof *bf), *diff2 = calloc((size_t)nb, sizeof *diff2);
        batch(ff, ha, kh, cases[c].mech, cases[c].k); /* warm both */
        batch(vf, d, kd, cases[c].mech, cases[c].k);
        for (int b = 0; b < nb; b++) {
            if (b & 1) {
                bh[b] = batch(ff, ha, kh, cases[c].mech, cases[c].k);
                bf[b] = batch(ff, df, kf, cases[c].mech, cases[c].k);
                bd[b] = batch(vf, d, kd, cases[c].mech, cases[c].k);
            } else {
                bd[b] = batch(vf, d, kd, cases[c].mech, cases[c].k);
                bf[b] = batch(ff, df, kf, cases[c].mech, cases[c].k);
                bh[b] = batch(ff, ha, kh, cases[c].mech, cases[c].k);
            }
            diff[b] = bh[b] - bd[b];
            diff2[b] = bh[b] - bf[b];
        }
        qsort(bh, (size_t)nb, sizeof *bh, cmp);
        qsort(bd, (size_t)nb, sizeof *bd, cmp);
        qsort(bf, (size_t)nb, sizeof *bf, cmp);
        qsort(diff, (size_t)nb, sizeof *diff, cmp);
        qsort(diff2, (size_t)nb, sizeof *diff2, cmp);
        printf("{\"scenario\": \"ha_overhead\", \"mech\": \"%s\", \"operations\": %d, \"direct_p50_ns\": %.0f, "
               "\"front_p50_ns\": %.0f, \"ha_p50_ns\": %.0f, \"added_p50_ns\": %.0f, \"over_front_p50_ns\": %.0f}\n",
               cases[c].name, nb * cases[c].k, bd[nb / 2], bf[nb / 2], bh[nb / 2], diff[nb / 2], diff2[nb / 2]);
        free(bh);
        free(bd);
        free(bf);
        free(diff);
        free(diff2);
    }
}

struct worker {
    pthread_t t;
    CK_FUNCTION_LIST_PTR f;
    CK_SLOT_ID slot;
    double until;
    long ops;
};

static void *sign_loop(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE h = session(w->f, w->slot);
    CK_OBJECT_HANDLE k = find(w->f, h, CKO_SECRET_KEY, "ha-hmac");
    while (now_ns() < w->until)
        w->ops += (long)(batch(w->f, h, k, CKM_SHA256_HMAC, 1) > 0);
    w->f->C_CloseSession(h);
    return NULL;
}

static double throughput(CK_FUNCTION_LIST_PTR f, CK_SLOT_ID slot, int seconds, int threads)
{
    struct worker *w = calloc((size_t)threads, sizeof *w);
    long ops = 0;
    double t0 = now_ns();
    for (int i = 0; i < threads; i++) {
        w[i] = (struct worker){.f = f, .slot = slot, .until = t0 + seconds * 1e9};
        pthread_create(&w[i].t, NULL, sign_loop, &w[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(w[i].t, NULL);
        ops += w[i].ops;
    }
    free(w);
    return ops / ((now_ns() - t0) / 1e9);
}

int main(int argc, char **argv)
{
    CK_C_INITIALIZE_ARGS args = {.flags = CKF_OS_LOCKING_OK};
    CK_RV rv;
    if (argc < 4) {
        fprintf(stderr, "usage: ha_bench VENDOR FRONT overhead ITERATIONS | scale SECONDS THREADS\n");
        return 2;
    }
    vf = load(argv[1]);
    ff = load(argv[2]);
    if ((rv = ff->C_Initialize(&args)) != CKR_OK) {
        fprintf(stderr, "ha_bench: C_Initialize: 0x%lx\n", rv);
        return 2;
    }
    vf->C_Initialize(&args); /* the same instance: already initialized, or p11-kit's own */
    make_hmac_keys();
    if (strcmp(argv[3], "overhead") == 0 && argc == 5) {
        overhead(atoi(argv[4]));
    } else if (strcmp(argv[3], "scale") == 0 && argc == 6) {
        int sec = atoi(argv[4]), th = atoi(argv[5]);
        double one = throughput(vf, m00, sec, th), ha = throughput(ff, HA_SLOT, sec, th);
        printf("{\"scenario\": \"ha_scale\", \"threads\": %d, \"one_member_ops_s\": %.0f, \"ha_ops_s\": %.0f, "
               "\"ratio\": %.2f}\n",
               th, one, ha, ha / one);
    } else {
        return 2;
    }
    return 0;
}
