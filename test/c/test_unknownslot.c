/*
 * test_unknownslot.c - a slot the library does not know, asked about while a
 * member is stopped, must not stall the host's own calls to healthy
 * members (issue 17, item 1). Members are SoftHSM2 tokens, each behind its
 * own p11-kit server; the vendor module is p11-kit-proxy.so, whose
 * C_GetSlotList asks every member while holding its process-wide lock, so a
 * slot list during a hang blocks every call of the process.
 *
 *   test_unknownslot beside | front
 *
 * beside: the host loads p11-kit-proxy.so itself and libhaext.so beside it
 *         (which runs an instance of its own of the proxy: the lock is one
 *         for the process all the same).
 * front:  the host loads libhaext-pkcs11.so as its module (the front loads
 *         the proxy, LibUNIX64) and calls CA_GetCurrentHAState from it.
 *
 * One host thread measures its own C_GetSessionInfo on a session of its own
 * on member 0 (healthy), in a loop, while member 1's p11-kit-remote is
 * SIGSTOPped (lab.sh stop), twice: first with status calls about the group
 * only (the reference: what the module alone does), then with status calls
 * about unknown slots first. Its worst latency in the second window must
 * stay near the reference.
 *
 * Environment (from test/c/run.sh): LIBHAEXT, HAEXT_FRONT, HALAB_MODULE,
 * HALAB_DIR, HALAB_SERIALS, HALAB_LAB_SH, HALAB_TIMEOUT_MS.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define MAX 32
#define UNKNOWN_SLOT ((CK_SLOT_ID)999999)

static struct host host;
static int nmembers;
static char serial_text[MAX][32];
static CK_ULONG serials[MAX];
static CK_SLOT_ID slots[MAX];
static double timeout_ms;

/* The host's prober: C_GetSessionInfo on its own session, every 5 ms. A
 * call counts in the window that was open when it started. */
enum { WIN_NONE = -1, WIN_REFERENCE, WIN_UNKNOWN, WIN_COUNT };
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int window = WIN_NONE;
static int prober_running = 1;
static double worst[WIN_COUNT];
static long calls[WIN_COUNT], failures[WIN_COUNT];
static CK_SESSION_HANDLE host_session;

static void *prober(void *arg)
{
    (void)arg;
    for (;;) {
        CK_SESSION_INFO si;
        double t0, ms;
        int w;
        CK_RV rv;
        pthread_mutex_lock(&mu);
        w = window;
        if (!prober_running) {
            pthread_mutex_unlock(&mu);
            return NULL;
        }
        pthread_mutex_unlock(&mu);
        t0 = now_ms();
        rv = host.p11->C_GetSessionInfo(host_session, &si);
        ms = now_ms() - t0;
        if (w != WIN_NONE) {
            pthread_mutex_lock(&mu);
            calls[w]++;
            failures[w] += rv != CKR_OK;
            worst[w] = ms > worst[w] ? ms : worst[w];
            pthread_mutex_unlock(&mu);
        }
        sleep_ms(5);
    }
}

static void set_window(int w)
{
    pthread_mutex_lock(&mu);
    window = w;
    pthread_mutex_unlock(&mu);
}

static void show(const char *what, CK_RV rv, const CK_HA_STATUS *st, double ms)
{
    char line[512];
    int i, n = snprintf(line, sizeof line, "%s: %s (%.1f ms)", what, status_name(rv), ms);
    if (rv == CKR_OK) {
        n += snprintf(line + n, sizeof line - n, ":");
        for (i = 0; i < (int)st->listSize && i < MAX && n < (int)sizeof line; i++) {
            n += snprintf(line + n, sizeof line - n, " %s", status_name(st->memberList[i].memberStatus));
        }
    }
    note("%s", line);
}

/* group_is: the report about the group lists every member in order, member
 * 1 with m1, the others CKR_OK. */
static int group_is(CK_RV rv, const CK_HA_STATUS *st, CK_RV m1)
{
    int i;
    if (rv != CKR_OK || st->listSize != (CK_ULONG)nmembers) {
        return 0;
    }
    for (i = 0; i < nmembers; i++) {
        if (st->memberList[i].memberSerial != serials[i] ||
            st->memberList[i].memberStatus != (i == 1 ? m1 : CKR_OK)) {
            return 0;
        }
    }
    return 1;
}

static double wait_all_ok(double limit_ms)
{
    CK_HA_STATUS st;
    double t0 = now_ms(), ms = 0;
    CK_RV rv = CKR_GENERAL_ERROR;
    while (now_ms() - t0 < limit_ms) {
        rv = timed_state(&host, slots[0], &st, &ms);
        if (group_is(rv, &st, CKR_OK)) {
            return now_ms() - t0;
        }
        sleep_ms(20);
    }
    show("still not all CKR_OK", rv, &st, ms);
    return -1;
}

/* known: one status call about the group, during the hang: member 1
 * CKR_HA_TIMEOUT, the others CKR_OK. */
static int known(const char *what)
{
    CK_HA_STATUS st;
    double ms;
    CK_RV rv = timed_state(&host, slots[0], &st, &ms);
    show(what, rv, &st, ms);
    return group_is(rv, &st, CKR_HA_TIMEOUT);
}

/* unknown: one status call about a slot nobody has; returns whether it
 * answered CKR_SLOT_ID_INVALID within statusTimeout, and its duration. */
static int unknown(CK_SLOT_ID slot, double *took)
{
    CK_HA_STATUS st;
    double ms;
    char what[64];
    CK_RV rv = timed_state(&host, slot, &st, &ms);
    snprintf(what, sizeof what, "slot %lu", (unsigned long)slot);
    show(what, rv, &st, ms);
    *took = ms;
    return rv == CKR_SLOT_ID_INVALID && ms <= timeout_ms;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    pthread_t t;
    CK_HA_STATUS st;
    double ms, back, slowest = 0, bound;
    int i, ok_unknown = 1, ok_known = 1;
    CK_RV rv;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(mode, "beside") == 0) {
        host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    } else if (strcmp(mode, "front") == 0) {
        host_load(&host, need_env("HAEXT_FRONT"), need_env("HAEXT_FRONT"));
    } else {
        fprintf(stderr, "usage: %s beside|front\n", argv[0]);
        return 2;
    }
    nmembers = lab_members(serial_text, serials, MAX);
    timeout_ms = atof(need_env("HALAB_TIMEOUT_MS"));
    lab_slots(&host, serial_text, nmembers, slots);
    check(nmembers >= 3, "%s: a group of %d members", mode, nmembers);

    back = wait_all_ok(5000);
    check(back >= 0, "healthy group: every member CKR_OK (%.0f ms)", back);
    rv = host.p11->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &host_session);
    check(rv == CKR_OK, "the host opens a session of its own on member 0 (%s)", status_name(rv));
    pthread_create(&t, NULL, prober, NULL);

    /* The reference: member 1 stopped, status calls about the group only. */
    set_window(WIN_REFERENCE);
    lab_do("stop", 1);
    sleep_ms(100);
    ok_known &= known("reference, member 1 stopped");
    for (i = 0; i < 4; i++) {
        sleep_ms(250);
        ok_known &= known("reference, again");
    }
    lab_do("cont", 1);
    sleep_ms(200);
    set_window(WIN_NONE);
    back = wait_all_ok(5000);
    check(back >= 0, "after SIGCONT every member CKR_OK again (%.0f ms)", back);

    /* A slot-map refresh a miss starts waits a second after the last. */
    sleep_ms(1200);

    /* The fault: member 1 stops, no call to it is in flight, and the host
     * asks about slots nobody has, then about the group. */
    set_window(WIN_UNKNOWN);
    lab_do("stop", 1);
    sleep_ms(100);
    for (i = 0; i < 3; i++) {
        ok_unknown &= unknown(UNKNOWN_SLOT, &ms);
        slowest = ms > slowest ? ms : slowest;
    }
    ok_known &= known("member 1 stopped, after the unknown slots");
    for (i = 0; i < 2; i++) {
        ok_unknown &= unknown(UNKNOWN_SLOT - 1 - i, &ms);
        slowest = ms > slowest ? ms : slowest;
        ok_known &= known("and the group again");
    }
    sleep_ms(300);
    lab_do("cont", 1);
    sleep_ms(200);
    set_window(WIN_NONE);

    pthread_mutex_lock(&mu);
    prober_running = 0;
    pthread_mutex_unlock(&mu);
    pthread_join(t, NULL);

    note("the host's C_GetSessionInfo on member 0 while member 1 was stopped: reference (group only) worst "
         "%.1f ms over %ld calls (%ld failed); with unknown slots worst %.1f ms over %ld calls (%ld failed)",
         worst[WIN_REFERENCE], calls[WIN_REFERENCE], failures[WIN_REFERENCE], worst[WIN_UNKNOWN],
         calls[WIN_UNKNOWN], failures[WIN_UNKNOWN]);
    check(ok_unknown, "every unknown slot answered CKR_SLOT_ID_INVALID within statusTimeout (slowest %.1f ms, "
                      "timeout %.0f)", slowest, timeout_ms);
    check(ok_known, "every status call about the group during the hangs: member 1 CKR_HA_TIMEOUT, the others "
                    "CKR_OK");
    bound = 200 + 2 * worst[WIN_REFERENCE];
    check(failures[WIN_UNKNOWN] == 0 && worst[WIN_UNKNOWN] < bound,
          "the host's own calls to a healthy member keep their latency while unknown slots are asked: worst "
          "%.1f ms (bound %.0f ms = 200 + 2 x the reference)", worst[WIN_UNKNOWN], bound);
    back = wait_all_ok(5000);
    check(back >= 0, "after SIGCONT every member CKR_OK again (%.0f ms)", back);
    rv = timed_state(&host, UNKNOWN_SLOT, &st, &ms);
    check(rv == CKR_SLOT_ID_INVALID, "and the unknown slot is still CKR_SLOT_ID_INVALID (%s, %.1f ms)",
          status_name(rv), ms);
    host.p11->C_CloseSession(host_session);
    return done();
}
