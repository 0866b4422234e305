/*
 * lend_host.c - a host that loads the front module (build/libhaext-pkcs11.so)
 * and works its sessions hard while CA_GetCurrentHAState runs in the same
 * process, with a session watch (test/shim/watchshim.c) between the front
 * and the vendor (Chrystoki2/LibHAExtVendor = watchshim.so,
 * WATCHSHIM_MODULE = the vendor). run.sh runs it on SoftHSM2 and on the
 * p11-kit lab.
 *
 *   lend_host FRONT WATCHSHIM [storm] [closeall] [so-busy]   (default: all three)
 *   lend_host - WATCHSHIM storm                             (the control)
 *
 * With "-" for FRONT the host loads the watch directly (the vendor alone,
 * no libhaext): the control, which must count 0 overlaps too.
 * storm     16 host threads, each with a session on m00 and one on m01 of
 *           its own, call C_GetSessionInfo, C_GenerateRandom and
 *           C_FindObjects* on them and now and then close and reopen one,
 *           for LEND_STORM_S seconds (default 6), while 2 threads call
 *           CA_GetCurrentHAState as fast as they can. The watch must count
 *           0 calls on one handle overlapping (the front lends a host
 *           session only while no host call can start on it), and
 *           libhaext's calls must have gone to the host's sessions (the
 *           test is not vacuous).
 * closeall  2 host threads, one per member, open sessions and call
 *           C_CloseAllSessions in a loop for LEND_CLOSEALL_S seconds
 *           (default 3) under the same CA_GetCurrentHAState threads: every
 *           verdict is the member's own answer or a CKR_HA_* code, never
 *           the front's lending error (CKR_FUNCTION_REJECTED).
 * so-busy   the host logs in as SO on its only session on m00 and keeps it
 *           busy from a thread for LEND_SO_S seconds (default 3): the front
 *           can neither lend it nor open a read-only session there
 *           (CKR_SESSION_READ_WRITE_SO_EXISTS); the members stay CKR_OK.
 *
 * Environment: ChrystokiConfigurationPath (the lab's), and the watch's.
 * Tokens m00 and m01: SO PIN 12345678, user PIN 1234.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define SO_PIN "12345678"
#define HOST_THREADS 16
#define CA_THREADS 2

/* watchshim.c's counters. */
struct watchshim_stats {
    unsigned long calls, overlaps, foreign, untracked;
    char first_overlap[128];
};

static CK_FUNCTION_LIST_PTR F; /* the front's list */
static ha_state_fn ca_state;
static void (*ws_mark_host)(void);
static void (*ws_stats)(struct watchshim_stats *);
static void (*ws_reset)(void);
static CK_SLOT_ID slot_m[2], ca_slot;

static double seconds(const char *env, double dflt)
{
    const char *v = getenv(env);
    return v != NULL && *v != 0 ? atof(v) : dflt;
}

static CK_SLOT_ID slot_of(const char *label)
{
    CK_SLOT_ID list[16];
    CK_ULONG n = 16, i;
    size_t len = strlen(label);
    if (F->C_GetSlotList(CK_TRUE, list, &n) != CKR_OK)
        return (CK_SLOT_ID)-1;
    for (i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (F->C_GetTokenInfo(list[i], &ti) == CKR_OK && memcmp(ti.label, label, len) == 0 && ti.label[len] == ' ')
            return list[i];
    }
    return (CK_SLOT_ID)-1;
}

/* --- the CA_GetCurrentHAState threads, and their tally of verdicts --------- */

#define TALLY 8
static volatile int ca_stop;
static pthread_mutex_t tally_mu = PTHREAD_MUTEX_INITIALIZER;
static long ca_calls, ca_failed, verdicts;
static CK_RV ca_failed_rv;
static struct {
    CK_RV rv;
    long n;
} tally[TALLY]; /* verdicts other than CKR_OK, by status */

static void tally_reset(void)
{
    pthread_mutex_lock(&tally_mu);
    ca_calls = ca_failed = verdicts = 0;
    memset(tally, 0, sizeof tally);
    pthread_mutex_unlock(&tally_mu);
}

static void tally_add(CK_RV rv)
{
    int i;
    for (i = 0; i < TALLY; i++) {
        if (tally[i].n == 0)
            tally[i].rv = rv;
        if (tally[i].rv == rv) {
            tally[i].n++;
            return;
        }
    }
}

static int is_ha(CK_RV rv)
{
    return rv == CKR_HA_NO_INSTANCE || rv == CKR_HA_SOCKET_DOWN || rv == CKR_HA_TIMEOUT;
}

/* Verdicts neither CKR_OK nor a CKR_HA_* code, and their text. */
static long tally_text(char *buf, size_t len, long *ha)
{
    long wrong = 0;
    size_t at = 0;
    int i;
    buf[0] = 0;
    *ha = 0;
    pthread_mutex_lock(&tally_mu);
    for (i = 0; i < TALLY && tally[i].n > 0; i++) {
        if (is_ha(tally[i].rv))
            *ha += tally[i].n;
        else
            wrong += tally[i].n;
        if (at < len)
            at += (size_t)snprintf(buf + at, len - at, "%s%s x%ld", at ? ", " : "", status_name(tally[i].rv),
                                   tally[i].n);
    }
    pthread_mutex_unlock(&tally_mu);
    return wrong;
}

static void *ca_thread(void *arg)
{
    (void)arg;
    while (!ca_stop) {
        CK_HA_STATUS st;
        CK_RV rv;
        unsigned i;
        memset(&st, 0, sizeof st);
        rv = ca_state(ca_slot, &st);
        pthread_mutex_lock(&tally_mu);
        ca_calls++;
        if (rv != CKR_OK) {
            ca_failed++;
            ca_failed_rv = rv;
        } else {
            for (i = 0; i < st.listSize && i < CK_HA_MAX_MEMBERS; i++) {
                verdicts++;
                if (st.memberList[i].memberStatus != CKR_OK)
                    tally_add(st.memberList[i].memberStatus);
            }
        }
        pthread_mutex_unlock(&tally_mu);
    }
    return NULL;
}

static pthread_t ca_threads[CA_THREADS];

static void ca_start(void)
{
    int i;
    tally_reset();
    ca_stop = 0;
    for (i = 0; i < CA_THREADS && ca_state != NULL; i++)
        pthread_create(&ca_threads[i], NULL, ca_thread, NULL);
}

static void ca_join(void)
{
    int i;
    ca_stop = 1;
    for (i = 0; i < CA_THREADS && ca_state != NULL; i++)
        pthread_join(ca_threads[i], NULL);
}

/* The checks every scenario makes of the CA_GetCurrentHAState calls. */
static void ca_checks(const char *scenario, int strict)
{
    char text[512];
    long ha, wrong = tally_text(text, sizeof text, &ha);
    if (ca_state == NULL)
        return; /* the vendor alone */
    check(ca_calls > 10 && ca_failed == 0, "%s: %ld CA_GetCurrentHAState calls meanwhile, all CKR_OK (%ld failed, last 0x%lx)",
          scenario, ca_calls, ca_failed, ca_failed_rv);
    check(wrong == 0 && (!strict || ha == 0),
          "%s: of %ld member verdicts, %ld neither CKR_OK nor CKR_HA_* (the front's lending errors)%s; %ld CKR_HA_*%s%s",
          scenario, verdicts, wrong, strict ? " and none CKR_HA_*" : "", ha, text[0] ? ": " : "", text);
}

/* --- storm ---------------------------------------------------------------------- */

static volatile int host_stop;

struct worker {
    int id;
    CK_SESSION_HANDLE session; /* so-busy: the session to keep busy */
    long calls, failed;
    CK_RV failed_rv;
    const char *failed_fn;
};

static void fail(struct worker *w, const char *fn, CK_RV rv)
{
    w->failed++;
    w->failed_rv = rv;
    w->failed_fn = fn;
}

#define CALL(w, fn, args) \
    do { \
        CK_RV rv_ = F->fn args; \
        (w)->calls++; \
        if (rv_ != CKR_OK) \
            fail(w, #fn, rv_); \
    } while (0)

static void *storm_worker(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE s[2] = {0, 0};
    unsigned long n = 0;
    int k;
    ws_mark_host();
    for (k = 0; k < 2; k++)
        CALL(w, C_OpenSession, (slot_m[k], CKF_SERIAL_SESSION, NULL, NULL, &s[k]));
    while (!host_stop) {
        for (k = 0; k < 2; k++) {
            CK_SESSION_INFO si;
            CK_BYTE rnd[16];
            CK_OBJECT_HANDLE objs[4];
            CK_ULONG count;
            CALL(w, C_GetSessionInfo, (s[k], &si));
            CALL(w, C_GenerateRandom, (s[k], rnd, sizeof rnd));
            CALL(w, C_FindObjectsInit, (s[k], NULL, 0));
            CALL(w, C_FindObjects, (s[k], objs, 4, &count));
            CALL(w, C_FindObjectsFinal, (s[k]));
        }
        if (++n % 64 == (unsigned long)w->id % 64) {
            k = (int)(n / 64) & 1;
            CALL(w, C_CloseSession, (s[k]));
            CALL(w, C_OpenSession, (slot_m[k], CKF_SERIAL_SESSION, NULL, NULL, &s[k]));
        }
    }
    for (k = 0; k < 2; k++)
        CALL(w, C_CloseSession, (s[k]));
    return NULL;
}

static void storm(void)
{
    double secs = seconds("LEND_STORM_S", 6);
    struct worker w[HOST_THREADS];
    pthread_t t[HOST_THREADS];
    struct watchshim_stats st;
    long calls = 0, failed = 0;
    int i;
    ws_reset();
    memset(w, 0, sizeof w);
    ca_start();
    host_stop = 0;
    for (i = 0; i < HOST_THREADS; i++) {
        w[i].id = i;
        pthread_create(&t[i], NULL, storm_worker, &w[i]);
    }
    sleep_ms((long)(secs * 1000));
    host_stop = 1;
    for (i = 0; i < HOST_THREADS; i++) {
        pthread_join(t[i], NULL);
        calls += w[i].calls;
        failed += w[i].failed;
    }
    ca_join();
    ws_stats(&st);
    check(calls > 1000 && failed == 0, "storm: %d host threads made %ld calls in %.0f s, all CKR_OK", HOST_THREADS,
          calls, secs);
    for (i = 0; i < HOST_THREADS && failed > 0; i++)
        if (w[i].failed > 0) {
            note("thread %d: %ld failed, the last %s 0x%lx", i, w[i].failed, w[i].failed_fn, w[i].failed_rv);
            break;
        }
    check(st.overlaps == 0, "storm: the session watch counts %lu calls on one handle overlapping, of %lu%s%s",
          st.overlaps, st.calls, st.overlaps ? "; the first: " : "", st.first_overlap);
    if (ca_state != NULL)
        check(st.foreign > 100, "storm: libhaext made %lu of its calls on the host's own sessions (lent)", st.foreign);
    check(st.untracked == 0, "storm: the watch tracked every handle");
    ca_checks("storm", 0);
}

/* --- closeall ------------------------------------------------------------------- */

static void *closeall_worker(void *arg)
{
    struct worker *w = arg;
    CK_SLOT_ID slot = slot_m[w->id];
    ws_mark_host();
    while (!host_stop) {
        CK_SESSION_HANDLE a, b;
        CK_SESSION_INFO si;
        CALL(w, C_OpenSession, (slot, CKF_SERIAL_SESSION, NULL, NULL, &a));
        CALL(w, C_OpenSession, (slot, CKF_SERIAL_SESSION, NULL, NULL, &b));
        CALL(w, C_GetSessionInfo, (a, &si));
        CALL(w, C_CloseAllSessions, (slot));
    }
    return NULL;
}

static void closeall(void)
{
    double secs = seconds("LEND_CLOSEALL_S", 3);
    struct worker w[2];
    pthread_t t[2];
    struct watchshim_stats st;
    int i;
    ws_reset();
    memset(w, 0, sizeof w);
    ca_start();
    host_stop = 0;
    for (i = 0; i < 2; i++) {
        w[i].id = i;
        pthread_create(&t[i], NULL, closeall_worker, &w[i]);
    }
    sleep_ms((long)(secs * 1000));
    host_stop = 1;
    for (i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    ca_join();
    ws_stats(&st);
    check(w[0].calls + w[1].calls > 100 && w[0].failed + w[1].failed == 0,
          "closeall: 2 host threads made %ld calls (C_OpenSession x2, C_GetSessionInfo, C_CloseAllSessions), all "
          "CKR_OK",
          w[0].calls + w[1].calls);
    check(st.overlaps == 0, "closeall: the session watch counts %lu overlapping calls%s%s", st.overlaps,
          st.overlaps ? "; the first: " : "", st.first_overlap);
    ca_checks("closeall", 0);
}

/* --- so-busy -------------------------------------------------------------------- */

static void *so_worker(void *arg)
{
    struct worker *w = arg;
    CK_SESSION_HANDLE s = w->session;
    ws_mark_host();
    while (!host_stop) {
        CK_SESSION_INFO si;
        CK_BYTE rnd[16];
        CALL(w, C_GetSessionInfo, (s, &si));
        CALL(w, C_GenerateRandom, (s, rnd, sizeof rnd));
    }
    return NULL;
}

static void so_busy(void)
{
    double secs = seconds("LEND_SO_S", 3);
    CK_SESSION_HANDLE s;
    struct worker w;
    pthread_t t;
    CK_RV rv;
    F->C_CloseAllSessions(slot_m[0]);
    rv = F->C_OpenSession(slot_m[0], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    check(rv == CKR_OK, "so-busy: host opens a read-write session on m00, its only one there (0x%lx)", rv);
    rv = F->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN));
    check(rv == CKR_OK, "so-busy: host logs in as SO on it (0x%lx)", rv);
    memset(&w, 0, sizeof w);
    w.session = s;
    ca_start();
    host_stop = 0;
    pthread_create(&t, NULL, so_worker, &w);
    sleep_ms((long)(secs * 1000));
    host_stop = 1;
    pthread_join(t, NULL);
    ca_join();
    check(w.calls > 100 && w.failed == 0, "so-busy: a host thread kept it busy with %ld calls, all CKR_OK", w.calls);
    ca_checks("so-busy", 1);
    F->C_Logout(s);
    F->C_CloseSession(s);
}

int main(int argc, char **argv)
{
    CK_C_GetFunctionList gfl;
    void *front, *shim;
    CK_C_INITIALIZE_ARGS locking = {.flags = CKF_OS_LOCKING_OK};
    CK_VOID_PTR init_args = NULL;
    CK_RV rv;
    static const char *const all[] = {"storm", "closeall", "so-busy"};
    const char *const *scenarios = argc > 3 ? (const char *const *)argv + 3 : all;
    int i, n = argc > 3 ? argc - 3 : 3;
    if (argc < 3) {
        fprintf(stderr, "usage: lend_host FRONT WATCHSHIM [storm] [closeall] [so-busy]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (strcmp(argv[1], "-") == 0) {
        /* The control: the watch is the host's module. */
        shim = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
        gfl = shim != NULL ? (CK_C_GetFunctionList)dlsym(shim, "C_GetFunctionList") : NULL;
        check(gfl != NULL && gfl(&F) == CKR_OK, "control: the host loads the session watch %s, no libhaext",
              argv[2]);
        if (F == NULL)
            return done();
        init_args = &locking;
    } else {
        front = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
        gfl = front != NULL ? (CK_C_GetFunctionList)dlsym(front, "C_GetFunctionList") : NULL;
        ca_state = front != NULL ? (ha_state_fn)dlsym(front, "CA_GetCurrentHAState") : NULL;
        check(gfl != NULL && ca_state != NULL && gfl(&F) == CKR_OK, "the front %s loads", argv[1]);
        if (F == NULL)
            return done();
        /* The front loaded its vendor, the watch, on C_GetFunctionList:
         * the same instance. */
        shim = dlopen(argv[2], RTLD_NOW | RTLD_NOLOAD);
    }
    ws_mark_host = shim != NULL ? (void (*)(void))dlsym(shim, "watchshim_mark_host") : NULL;
    ws_stats = shim != NULL ? (void (*)(struct watchshim_stats *))dlsym(shim, "watchshim_stats") : NULL;
    ws_reset = shim != NULL ? (void (*)(void))dlsym(shim, "watchshim_reset") : NULL;
    check(ws_mark_host != NULL && ws_stats != NULL && ws_reset != NULL,
          "the session watch's counters (%s)", argv[2]);
    if (ws_stats == NULL)
        return done();
    ws_mark_host();
    /* NULL through the front: it adds CKF_OS_LOCKING_OK itself. */
    rv = F->C_Initialize(init_args);
    check(rv == CKR_OK, "C_Initialize (0x%lx)", rv);
    slot_m[0] = slot_of("m00");
    slot_m[1] = slot_of("m01");
    ca_slot = slot_m[0];
    check(slot_m[0] != (CK_SLOT_ID)-1 && slot_m[1] != (CK_SLOT_ID)-1, "tokens m00 and m01 (slots 0x%lx, 0x%lx)",
          slot_m[0], slot_m[1]);
    if (slot_m[0] == (CK_SLOT_ID)-1 || slot_m[1] == (CK_SLOT_ID)-1)
        return done();
    for (i = 0; i < n; i++) {
        if (strcmp(scenarios[i], "storm") == 0)
            storm();
        else if (strcmp(scenarios[i], "closeall") == 0)
            closeall();
        else if (strcmp(scenarios[i], "so-busy") == 0)
            so_busy();
        else
            check(0, "unknown scenario %s", scenarios[i]);
    }
    rv = F->C_Finalize(NULL);
    check(rv == CKR_OK, "C_Finalize (0x%lx)", rv);
    return done();
}
