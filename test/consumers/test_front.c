/*
 * test_front.c - the front module's state at the C level, against a real
 * SoftHSM2 behind OpenSC's pkcs11-spy.
 *
 * This program is the host: it links internal/front's C files, so its own
 * C_* functions are the front's trampolines, and it takes the hooks of
 * struct haext_vendor (internal/hostapi/hostapi.h) the way the engine's C
 * probe threads will. The vendor it loads is pkcs11-spy.so
 * (Chrystoki2/LibHAExtVendor), which logs every call the front makes to
 * SoftHSM2, so a check can count the front's own C_OpenSession calls.
 *
 * Built with FRONT_WAIT_MS=1000 (the wait bound) by run.sh. With the
 * argument finalize-loop, only the host's C_Finalize/C_Initialize loop
 * under 4 probe threads runs (run.sh: against SoftHSM2 directly, 10 s).
 * With net-events, on the p11-kit lab: a member killed under the host.
 * With v3, the vendor is test/shim/v3shim.c (a 3.0 module over SoftHSM2,
 * V3SHIM_CANCEL_MS=300): the 3.0 list's trampolines and C_LoginUser.
 * Environment: ChrystokiConfigurationPath, SOFTHSM2_CONF, PKCS11SPY,
 * PKCS11SPY_OUTPUT (= FRONT_SPY_LOG), FRONT_STRESS_S (default 10).
 * Tokens m00 and m01: SO PIN 12345678, user PIN 1234.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "state.h"

#define SO_PIN "12345678"
#define USER_PIN "1234"

static const struct haext_vendor *H;
static CK_FUNCTION_LIST_PTR V; /* the vendor's list (the spy's) */
static CK_SLOT_ID slot_a, slot_b;

static CK_SLOT_ID slot_of(const char *label)
{
    CK_SLOT_ID list[16];
    CK_ULONG n = 16, i;
    if (C_GetSlotList(CK_TRUE, list, &n) != CKR_OK)
        return (CK_SLOT_ID)-1;
    for (i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (C_GetTokenInfo(list[i], &ti) == CKR_OK && strncmp((char *)ti.label, label, strlen(label)) == 0 &&
            ti.label[strlen(label)] == ' ')
            return list[i];
    }
    return (CK_SLOT_ID)-1;
}

/* Lines "N: C_Name" in the spy's log. */
static long spy_count(const char *fn)
{
    const char *path = getenv("FRONT_SPY_LOG");
    char line[512], pat[64];
    long n = 0;
    FILE *f;
    if (path == NULL || (f = fopen(path, "r")) == NULL)
        return -1;
    snprintf(pat, sizeof pat, ": %s\n", fn);
    while (fgets(line, sizeof line, f) != NULL) {
        char *p = strstr(line, pat);
        if (p != NULL && p + strlen(pat) == line + strlen(line))
            n++;
    }
    fclose(f);
    return n;
}

/* Whether the spy's log has a line containing text. */
static int spy_has(const char *text)
{
    const char *path = getenv("FRONT_SPY_LOG");
    char line[512];
    int found = 0;
    FILE *f;
    if (path == NULL || (f = fopen(path, "r")) == NULL)
        return 0;
    while (!found && fgets(line, sizeof line, f) != NULL)
        found = strstr(line, text) != NULL;
    fclose(f);
    return found;
}

static struct front_stats stats(void)
{
    struct front_stats st;
    front_attach_stats(&st);
    return st;
}

static int next_event(int kind, CK_SLOT_ID slot, CK_RV *rv)
{
    struct haext_front_event ev;
    while (front_events_poll(&ev)) {
        if (ev.kind == kind && (slot == HAEXT_SLOT_NONE || ev.slot == slot)) {
            if (rv != NULL)
                *rv = ev.rv;
            return 1;
        }
    }
    return 0;
}

static void drain_events(void)
{
    struct haext_front_event ev;
    while (front_events_poll(&ev)) {
    }
}

/* Opens the front's own session on slot: the host's sessions there are
 * made busy for the borrow, then the session is given back (it stays
 * open). Returns its handle. */
static CK_SESSION_HANDLE open_own(CK_SLOT_ID slot, CK_SESSION_HANDLE busy)
{
    CK_SESSION_HANDLE h = CK_INVALID_HANDLE;
    CK_SESSION_HANDLE prev = front_busy_begin(busy);
    CK_RV rv;
    if (!H->enter())
        return CK_INVALID_HANDLE;
    rv = H->borrow(slot, &h);
    if (rv == CKR_OK)
        H->give_back(h, CKR_OK);
    H->leave();
    front_busy_end(prev);
    return rv == CKR_OK ? h : CK_INVALID_HANDLE;
}

static void test_load(void)
{
    CK_FUNCTION_LIST_PTR l = NULL;
    check(C_GetFunctionList(&l) == CKR_OK && l == &front_function_list, "C_GetFunctionList returns the front's list");
    check(l != NULL && l->C_Sign == C_Sign && l->C_GetSessionInfo == C_GetSessionInfo && l->C_Login == C_Login &&
              l->C_WaitForSlotEvent == C_WaitForSlotEvent && l->C_Initialize == C_Initialize,
          "its entries are the front's own functions");
    H = front_attach_vendor();
    check(H != NULL && H->list != NULL && H->list != &front_function_list, "front_attach_vendor: the vendor's list (%s)",
          front_vendor_path());
    V = H->list;
    check(l != NULL && l->version.major == 2 && l->version.minor == 40,
          "the front's list is version 2.40, the one it implements, whatever the vendor's (%u.%u)",
          V ? V->version.major : 0, V ? V->version.minor : 0);
    {
        CK_INFO info;
        check(C_GetInfo(&info) == CKR_CRYPTOKI_NOT_INITIALIZED, "a call before C_Initialize gets the vendor's answer");
    }
    check(H->enter() == 0, "the gate is closed before the host's C_Initialize");
}

static void test_initialize(void)
{
    CK_RV rv = C_Initialize(NULL);
    check(rv == CKR_OK, "C_Initialize through the front: 0x%lx", rv);
    if (getenv("FRONT_SPY_LOG") != NULL)
        check(spy_has("CKF_OS_LOCKING_OK"),
              "the host's C_Initialize(NULL) reaches the vendor with CKF_OS_LOCKING_OK (libhaext's threads call too)");
    check(next_event(HAEXT_EV_INITIALIZED, HAEXT_SLOT_NONE, NULL), "event: initialized");
    check(H->enter() == 1, "the gate is open after the host's C_Initialize");
    H->leave();
    slot_a = slot_of("m00");
    slot_b = slot_of("m01");
    check(slot_a != (CK_SLOT_ID)-1 && slot_b != (CK_SLOT_ID)-1, "tokens m00 and m01 found (slots 0x%lx, 0x%lx)",
          slot_a, slot_b);
}

static void test_borrow(void)
{
    CK_SESSION_HANDLE s1, got = 0, got2 = 0;
    long opens0 = spy_count("C_OpenSession");
    struct front_stats st0 = stats(), st;
    CK_RV rv;

    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s1) == CKR_OK, "host opens a session on m00");
    check(stats().host_sessions == st0.host_sessions + 1, "the table holds it");
    check(H->enter() == 1, "enter");
    rv = H->borrow(slot_a, &got);
    check(rv == CKR_OK && got == s1, "borrow lends the host's idle session (0x%lx, rv 0x%lx)", got, rv);
    rv = H->borrow(slot_a, &got2);
    check(rv == CKR_OK && got2 != s1 && got2 != CK_INVALID_HANDLE,
          "a second borrow while it is lent gets the front's own session (0x%lx)", got2);
    {
        CK_SESSION_INFO si;
        check(V->C_GetSessionInfo(got2, &si) == CKR_OK && !(si.flags & CKF_RW_SESSION) && si.slotID == slot_a,
              "the own session is read-only, on the slot");
    }
    H->give_back(got, CKR_OK);
    H->give_back(got2, CKR_OK);
    st = stats();
    check(st.own_opened == st0.own_opened + 1 && st.loans_host == st0.loans_host + 1,
          "one own session opened, one host session lent");
    rv = H->borrow(slot_a, &got);
    check(rv == CKR_OK && got == s1, "once given back, the host's session is lent again");
    H->give_back(got, CKR_OK);
    {
        CK_SESSION_HANDLE prev = front_busy_begin(s1); /* a host call in flight on s1 */
        rv = H->borrow(slot_a, &got);
        check(rv == CKR_OK && got == got2, "while the host is in a call on it, the own session is lent instead");
        H->give_back(got, CKR_OK);
        front_busy_end(prev);
    }
    H->leave();
    check(spy_count("C_OpenSession") == opens0 + 2,
          "pkcs11-spy: C_OpenSession twice (the host's and one own), not per borrow");
    check(C_CloseSession(s1) == CKR_OK, "host closes its last session on m00");
    check(stats().own_closed == st0.own_closed + 1, "the front closed its own session there");
    {
        CK_SESSION_INFO si;
        check(V->C_GetSessionInfo(got2, &si) == CKR_SESSION_HANDLE_INVALID, "the vendor no longer knows it");
    }
}

struct caller {
    CK_SESSION_HANDLE h;
    CK_RV rv;
    double ms;
};

static void *info_thread(void *arg)
{
    struct caller *c = arg;
    CK_SESSION_INFO si;
    double t0 = now_ms();
    c->rv = C_GetSessionInfo(c->h, &si);
    c->ms = now_ms() - t0;
    return NULL;
}

/* A lent session is the front's until it is given back: a host call on it
 * waits; a session a host thread is in a call on is not lent, nor, from
 * inside a call made from inside a call (a vendor callback), any. */
static void test_lend_waits(void)
{
    CK_SESSION_HANDLE s, s2, got = 0, prev, prev2;
    struct front_stats st0 = stats();
    struct caller c;
    pthread_t t;
    CK_RV rv;
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK, "host opens a session");
    H->enter();
    check(H->borrow(slot_a, &got) == CKR_OK && got == s, "libhaext borrows it");
    c.h = s;
    pthread_create(&t, NULL, info_thread, &c);
    sleep_ms(300);
    H->give_back(got, CKR_OK);
    pthread_join(t, NULL);
    check(c.rv == CKR_OK && c.ms >= 250,
          "a host call on it waits until libhaext gives it back (%.0f ms, rv 0x%lx)", c.ms, c.rv);
    check(stats().host_waits == st0.host_waits + 1, "the front counted one host call that waited");

    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s2) == CKR_OK, "host opens a second session");
    prev = front_busy_begin(s);   /* a host call on s */
    prev2 = front_busy_begin(s2); /* and, from inside it (a callback), one on s2 */
    rv = H->borrow(slot_a, &got);
    check(rv == CKR_OK && got != s && got != s2,
          "inside a call made from inside a call on the other, neither host session is lent (0x%lx)", got);
    H->give_back(got, CKR_OK);
    front_busy_end(prev2);
    check(prev == CK_INVALID_HANDLE && prev2 == s, "the inner call returns to the outer one");
    rv = H->borrow(slot_a, &got);
    check(rv == CKR_OK && got == s2, "back in the outer call on s, s2 is lent again, s is not");
    H->give_back(got, CKR_OK);
    front_busy_end(prev);
    H->leave();
    C_CloseSession(s2);
    C_CloseSession(s);
}

static void test_so_login(void)
{
    CK_SESSION_HANDLE s, own, ro;
    CK_RV rv;
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) == CKR_OK,
          "host opens a read-write session on m00");
    own = open_own(slot_a, s);
    check(own != CK_INVALID_HANDLE, "the front's own read-only session is open on m00");
    rv = C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN));
    check(rv == CKR_OK, "C_Login(CKU_SO) succeeds with the own session open: 0x%lx", rv);
    {
        CK_SESSION_INFO si;
        check(V->C_GetSessionInfo(own, &si) == CKR_SESSION_HANDLE_INVALID, "the front closed it before the login");
    }
    {
        CK_SESSION_HANDLE h = 0;
        H->enter();
        rv = H->borrow(slot_a, &h);
        check(rv == CKR_OK && h == s, "while SO is logged in, borrow lends the host's SO session");
        H->give_back(h, CKR_OK);
        H->leave();
    }
    check(C_Logout(s) == CKR_OK, "C_Logout");
    /* Control: a read-only session the front does not own makes the same
     * login fail, so the check above can fail. */
    check(V->C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &ro) == CKR_OK, "control: a foreign RO session");
    rv = C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN));
    check(rv == CKR_SESSION_READ_ONLY_EXISTS, "control: then C_Login(CKU_SO) is CKR_SESSION_READ_ONLY_EXISTS (0x%lx)",
          rv);
    V->C_CloseSession(ro);
    check(C_CloseSession(s) == CKR_OK, "host closes its session");
}

static void test_logout_on_last_close(void)
{
    CK_SESSION_HANDLE s, s2, own, ro;
    CK_RV rv;
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK, "host opens a session");
    check(C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)) == CKR_OK, "host logs in as user");
    own = open_own(slot_a, s);
    check(own != CK_INVALID_HANDLE, "the front's own session is open on m00");
    check(C_CloseSession(s) == CKR_OK, "host closes its last session");
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s2) == CKR_OK, "host opens a new session");
    rv = C_Login(s2, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN));
    check(rv == CKR_OK, "C_Login is CKR_OK, not CKR_USER_ALREADY_LOGGED_IN: the user was logged out (0x%lx)", rv);
    C_CloseSession(s2);
    /* Control: a session kept open behind the host's back keeps the user
     * logged in. */
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK &&
              C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN)) == CKR_OK &&
              V->C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &ro) == CKR_OK,
          "control: host logs in, a foreign session is open");
    C_CloseSession(s);
    C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s2);
    rv = C_Login(s2, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN));
    check(rv == CKR_USER_ALREADY_LOGGED_IN, "control: then the next C_Login is CKR_USER_ALREADY_LOGGED_IN (0x%lx)", rv);
    V->C_CloseSession(ro);
    C_CloseSession(s2);
}

static void test_init_token(void)
{
    CK_SESSION_HANDLE own = open_own(slot_b, CK_INVALID_HANDLE);
    CK_UTF8CHAR label[32];
    CK_RV rv;
    check(own != CK_INVALID_HANDLE, "with no host session on m01, borrow opens the front's own there");
    memset(label, ' ', sizeof label);
    memcpy(label, "m01", 3);
    rv = C_InitToken(slot_b, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN), label);
    check(rv == CKR_OK, "C_InitToken succeeds with it open (closed first): 0x%lx", rv);
}

struct closer {
    CK_SESSION_HANDLE h;
    CK_RV rv;
    double ms;
};

static void *close_thread(void *arg)
{
    struct closer *c = arg;
    double t0 = now_ms();
    c->rv = C_CloseSession(c->h);
    c->ms = now_ms() - t0;
    return NULL;
}

static void test_close_waits_for_loan(void)
{
    CK_SESSION_HANDLE s, got = 0;
    struct closer c;
    pthread_t t;
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK, "host opens a session");
    H->enter();
    check(H->borrow(slot_a, &got) == CKR_OK && got == s, "libhaext borrows it");
    c.h = s;
    pthread_create(&t, NULL, close_thread, &c);
    sleep_ms(300);
    H->give_back(got, CKR_OK);
    H->leave();
    pthread_join(t, NULL);
    check(c.rv == CKR_OK && c.ms >= 250 && c.ms < 900,
          "the host's C_CloseSession waited for the loan to come back (%.0f ms, rv 0x%lx)", c.ms, c.rv);

    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK, "host opens a session");
    H->enter();
    check(H->borrow(slot_a, &got) == CKR_OK && got == s, "libhaext borrows it and keeps it");
    c.h = s;
    close_thread(&c);
    check(c.rv == CKR_OK && c.ms >= 900 && c.ms < 3000,
          "the wait is bounded: C_CloseSession forwarded after %.0f ms (bound 1000)", c.ms);
    H->give_back(got, CKR_SESSION_HANDLE_INVALID);
    H->leave();
}

struct finalizer {
    CK_RV rv;
    double ms;
};

static void *finalize_thread(void *arg)
{
    struct finalizer *f = arg;
    double t0 = now_ms();
    f->rv = C_Finalize(NULL);
    f->ms = now_ms() - t0;
    return NULL;
}

static void test_gate(void)
{
    struct finalizer f;
    pthread_t t;
    CK_RV rv;
    drain_events();
    check(H->enter() == 1, "libhaext enters the gate");
    pthread_create(&t, NULL, finalize_thread, &f);
    sleep_ms(300);
    check(H->enter() == 0, "once the host's C_Finalize began, enter() is refused");
    H->leave();
    pthread_join(t, NULL);
    check(f.rv == CKR_OK && f.ms >= 250 && f.ms < 900, "C_Finalize waited for the call inside (%.0f ms)", f.ms);
    check(next_event(HAEXT_EV_FINALIZED, HAEXT_SLOT_NONE, NULL), "event: finalized");
    check(H->enter() == 0, "the gate stays closed after C_Finalize");
    rv = C_Initialize(NULL);
    check(rv == CKR_OK && H->enter() == 1, "C_Initialize reopens it");
    check(stats().host_sessions == 0, "no host session is left in the table");
    pthread_create(&t, NULL, finalize_thread, &f);
    pthread_join(t, NULL);
    check(f.rv == CKR_OK && f.ms >= 900 && f.ms < 3000, "the wait is bounded: C_Finalize forwarded after %.0f ms",
          f.ms);
    H->leave();
    rv = C_Initialize(NULL);
    check(rv == CKR_OK, "C_Initialize again");
    rv = C_Initialize(NULL);
    check(rv == CKR_CRYPTOKI_ALREADY_INITIALIZED && H->enter() == 1,
          "a second C_Initialize: the vendor's CKR_CRYPTOKI_ALREADY_INITIALIZED, the gate stays open");
    H->leave();
}

static void test_host_errors(void)
{
    CK_SESSION_HANDLE s, s2;
    CK_SESSION_INFO si;
    CK_RV rv = 0, ev = 0;
    struct front_stats st0;
    drain_events();
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK &&
              C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s2) == CKR_OK,
          "host opens two sessions");
    st0 = stats();
    V->C_CloseSession(s); /* the module drops it behind the host's back */
    rv = C_GetSessionInfo(s, &si);
    check(rv == CKR_SESSION_HANDLE_INVALID, "the host's next call on it fails (0x%lx)", rv);
    check(next_event(HAEXT_EV_HOST_ERROR, slot_a, &ev) && ev == CKR_SESSION_HANDLE_INVALID,
          "event: host error on m00, CKR_SESSION_HANDLE_INVALID");
    check(stats().host_sessions == st0.host_sessions - 1, "the table forgot the dropped session");
    rv = C_GetSessionInfo(0x7fff0001UL, &si);
    check(rv == CKR_SESSION_HANDLE_INVALID && !next_event(HAEXT_EV_HOST_ERROR, HAEXT_SLOT_NONE, NULL),
          "a handle the table never knew is no event");
    C_CloseSession(s2);
    drain_events();
}

/* --- the host's C_Finalize/C_Initialize loop under libhaext's calls ------- */

static volatile int stop_probes;
static long probe_calls, probe_refused, probe_bad;
static CK_RV probe_bad_rv;
static const char *probe_bad_where = "";
static pthread_mutex_t probe_mu = PTHREAD_MUTEX_INITIALIZER;

/* One of the engine's probe threads: enter, borrow, one lightweight
 * call on the vendor's list, give back, leave. */
static void *probe(void *arg)
{
    CK_SLOT_ID slot = *(CK_SLOT_ID *)arg;
    long calls = 0, refused = 0, bad = 0;
    while (!stop_probes) {
        CK_SESSION_HANDLE h;
        CK_SESSION_INFO si;
        CK_RV rv;
        if (!H->enter()) {
            refused++;
            sched_yield();
            continue;
        }
        rv = H->borrow(slot, &h);
        if (rv == CKR_OK) {
            rv = H->list->C_GetSessionInfo(h, &si);
            H->give_back(h, rv);
            calls++;
            if (rv != CKR_OK || si.slotID != slot) {
                bad++;
                probe_bad_rv = rv;
                probe_bad_where = rv != CKR_OK ? "C_GetSessionInfo" : "slot of the lent session";
            }
        } else if (rv != CKR_FUNCTION_REJECTED) {
            bad++;
            probe_bad_rv = rv;
            probe_bad_where = "borrow";
        }
        H->leave();
    }
    pthread_mutex_lock(&probe_mu);
    probe_calls += calls;
    probe_refused += refused;
    probe_bad += bad;
    pthread_mutex_unlock(&probe_mu);
    return NULL;
}

static void test_finalize_loop(void)
{
    const char *s = getenv("FRONT_STRESS_S");
    double secs = s != NULL ? atof(s) : 10, t0;
    CK_SLOT_ID slots[4] = {slot_a, slot_b, slot_a, slot_b};
    pthread_t t[4];
    long cycles = 0, init_bad = 0;
    int i;
    stop_probes = 0;
    for (i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, probe, &slots[i]);
    t0 = now_ms();
    while (now_ms() - t0 < secs * 1000) {
        CK_SESSION_HANDLE h;
        CK_RV rv = C_Finalize(NULL);
        if (rv != CKR_OK)
            init_bad++;
        rv = C_Initialize(NULL);
        if (rv != CKR_OK)
            init_bad++;
        /* the host works a little between the cycles */
        if (C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &h) == CKR_OK && (cycles & 1))
            C_CloseSession(h);
        cycles++;
    }
    stop_probes = 1;
    for (i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    check(cycles > 20 && init_bad == 0,
          "%.0f s: %ld host C_Finalize/C_Initialize cycles, all CKR_OK, no crash", secs, cycles);
    check(probe_calls > 100 && probe_bad == 0,
          "4 threads made %ld calls on lent sessions meanwhile (%ld refused by the gate), none failed", probe_calls,
          probe_refused);
    if (probe_bad > 0)
        note("%ld failed; the last: %s 0x%lx", probe_bad, probe_bad_where, probe_bad_rv);
    drain_events();
}

/* --- fork ------------------------------------------------------------------ */

/* In the child: C_Initialize through the front (or the vendor directly),
 * then log in, make a key and sign. Exit status: the C_Initialize CK_RV's
 * low byte, or 100 + step when a later step fails, or 99 when the front's
 * state was not reset. */
static int child_work(int via_front)
{
    CK_FUNCTION_LIST_PTR f = via_front ? &front_function_list : V;
    CK_SESSION_HANDLE h;
    CK_OBJECT_HANDLE key;
    CK_MECHANISM gen = {CKM_GENERIC_SECRET_KEY_GEN, NULL, 0}, mac = {CKM_SHA256_HMAC, NULL, 0};
    CK_ULONG len = 32, siglen = 64;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE tmpl[] = {{CKA_VALUE_LEN, &len, sizeof len}, {CKA_SIGN, &yes, sizeof yes}};
    CK_BYTE sig[64];
    CK_RV rv;
    struct front_stats st;
    if (via_front) {
        front_attach_stats(&st);
        if (H->enter() != 0 || st.host_sessions != 0)
            return 99;
    }
    rv = f->C_Initialize(NULL);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED)
        return (int)(rv & 0x7f);
    if (f->C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &h) != CKR_OK)
        return 101;
    rv = f->C_Login(h, CKU_USER, (CK_UTF8CHAR_PTR)USER_PIN, strlen(USER_PIN));
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        return 102;
    if (f->C_GenerateKey(h, &gen, tmpl, 2, &key) != CKR_OK)
        return 103;
    if (f->C_SignInit(h, &mac, key) != CKR_OK || f->C_Sign(h, (CK_BYTE_PTR) "hi", 2, sig, &siglen) != CKR_OK)
        return 104;
    if (via_front && (H->enter() != 1 || (H->leave(), 0)))
        return 105;
    return rv == CKR_USER_ALREADY_LOGGED_IN ? 1 : 0;
}

static int fork_child(int via_front)
{
    int status;
    pid_t pid = fork();
    if (pid == 0)
        _exit(child_work(via_front));
    if (pid < 0 || waitpid(pid, &status, 0) != pid)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 200 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static void test_fork(void)
{
    CK_SESSION_HANDLE s, own;
    int front, vendor;
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK, "parent: host session open");
    own = open_own(slot_a, s);
    check(own != CK_INVALID_HANDLE, "parent: the front's own session open");
    front = fork_child(1);
    vendor = fork_child(0);
    check(front == vendor && front >= 0 && front < 99,
          "fork child: tables and gate reset, C_Initialize, login, key, sign through the front end as with the "
          "vendor alone (exit %d vs %d)", front, vendor);
    check(C_CloseSession(s) == CKR_OK, "parent: the host's session still works after the fork");
}

static void test_overflow(void)
{
    struct haext_front_event ev;
    int i, first_overflow;
    drain_events();
    for (i = 0; i < 70; i++) {
        C_Finalize(NULL);
        C_Initialize(NULL);
    }
    first_overflow = front_events_poll(&ev) && ev.kind == HAEXT_EV_OVERFLOW;
    check(first_overflow, "140 unread lifecycle events: the reader learns of the overflow first");
    drain_events();
    C_GetTokenInfo((CK_SLOT_ID)0x7ffffff0, NULL);
    check(!front_events_poll(&ev), "a non-connection error is no event");
}

/* --- PKCS#11 3.0 (the vendor is test/shim/v3shim.c) ------------------------ */

struct canceller {
    CK_FUNCTION_LIST_3_0 *l3;
    CK_SESSION_HANDLE h;
    CK_RV rv;
    double ms;
};

static void *cancel_thread(void *arg)
{
    struct canceller *c = arg;
    double t0 = now_ms();
    c->rv = c->l3->C_SessionCancel(c->h, 0);
    c->ms = now_ms() - t0;
    return NULL;
}

/* The 3.0 list's failures and C_LoginUser, on the host's session s. */
static void test_v3_failures(CK_FUNCTION_LIST_3_0 *l3, CK_SESSION_HANDLE s)
{
    CK_SESSION_HANDLE s2, own, ro;
    CK_SESSION_INFO si;
    struct front_stats st0;
    CK_RV rv, ev = 0;

    /* A failure of a 3.0 trampoline is recorded. */
    drain_events();
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &s2) == CKR_OK, "host opens a second session");
    st0 = stats();
    V->C_CloseSession(s2); /* the module drops it behind the host's back */
    rv = l3->C_SessionCancel(s2, 0);
    check(rv == CKR_SESSION_HANDLE_INVALID, "C_SessionCancel on it fails (0x%lx)", rv);
    check(next_event(HAEXT_EV_HOST_ERROR, slot_a, &ev) && ev == CKR_SESSION_HANDLE_INVALID,
          "event: host error on m00, CKR_SESSION_HANDLE_INVALID");
    check(stats().host_sessions == st0.host_sessions - 1, "the table forgot the dropped session");

    /* C_LoginUser(CKU_SO) takes C_Login's path. */
    own = open_own(slot_a, s);
    check(own != CK_INVALID_HANDLE, "the front's own read-only session is open on m00");
    rv = l3->C_LoginUser(s, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN), NULL, 0);
    check(rv == CKR_OK, "C_LoginUser(CKU_SO) succeeds with the own session open: 0x%lx", rv);
    check(V->C_GetSessionInfo(own, &si) == CKR_SESSION_HANDLE_INVALID, "the front closed it before the login");
    check(C_Logout(s) == CKR_OK, "C_Logout");
    check(V->C_OpenSession(slot_a, CKF_SERIAL_SESSION, NULL, NULL, &ro) == CKR_OK, "control: a foreign RO session");
    rv = l3->C_LoginUser(s, CKU_SO, (CK_UTF8CHAR_PTR)SO_PIN, strlen(SO_PIN), NULL, 0);
    check(rv == CKR_SESSION_READ_ONLY_EXISTS,
          "control: then C_LoginUser(CKU_SO) is CKR_SESSION_READ_ONLY_EXISTS (0x%lx)", rv);
    V->C_CloseSession(ro);
}

static void test_v3(void)
{
    CK_INTERFACE_PTR i = NULL;
    CK_VERSION v30 = {3, 0};
    CK_FUNCTION_LIST_3_0 *l3;
    CK_SESSION_HANDLE s, got = 0;
    struct canceller c;
    pthread_t t;
    CK_RV rv;

    check(V->version.major == 3, "the vendor reports 3.0 (%u.%u)", V->version.major, V->version.minor);
    rv = C_GetInterface((CK_UTF8CHAR_PTR) "PKCS 11", &v30, &i, 0);
    check(rv == CKR_OK && i != NULL && i->pFunctionList == &front_iface_list3,
          "C_GetInterface(\"PKCS 11\", 3.0): the front's 3.0 list (0x%lx)", rv);
    if (i == NULL || i->pFunctionList != &front_iface_list3)
        return;
    l3 = i->pFunctionList;

    /* The busy marker of a 3.0 trampoline. */
    check(C_OpenSession(slot_a, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s) == CKR_OK,
          "host opens a read-write session on m00");
    c.l3 = l3;
    c.h = s;
    pthread_create(&t, NULL, cancel_thread, &c);
    sleep_ms(100);
    check(H->enter() == 1, "enter");
    rv = H->borrow(slot_a, &got);
    check(rv == CKR_OK && got != s && got != CK_INVALID_HANDLE,
          "while the host is in C_SessionCancel on it (3.0 list), borrow lends the front's own session instead "
          "(0x%lx)", got);
    H->give_back(got, CKR_OK);
    pthread_join(t, NULL);
    check(c.rv == CKR_OK && c.ms >= 250, "C_SessionCancel: the vendor's CKR_OK after its 300 ms (%.0f ms, 0x%lx)",
          c.ms, c.rv);
    rv = H->borrow(slot_a, &got);
    check(rv == CKR_OK && got == s, "once it returned, the host's session is lent again");
    H->give_back(got, CKR_OK);
    H->leave();

    test_v3_failures(l3, s);
    check(C_CloseSession(s) == CKR_OK, "host closes its session");
    drain_events();
}

/* On the p11-kit lab: a member dies under the host (lab.sh kill): the
 * host's failing calls become host error events on its slot. */
static void test_net_events(void)
{
    CK_SESSION_HANDLE s;
    CK_SESSION_INFO si;
    CK_RV rv, ev = 0;
    CK_SLOT_ID list[16];
    CK_ULONG n = 16;
    drain_events();
    check(C_OpenSession(slot_b, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK, "host opens a session on m01");
    check(lab_run("kill", 1) == 0, "lab: member 1's p11-kit-remote killed");
    rv = C_GetSessionInfo(s, &si);
    check(rv == CKR_DEVICE_ERROR, "the host's next call on m01 fails: 0x%lx", rv);
    check(next_event(HAEXT_EV_HOST_ERROR, slot_b, &ev) && ev == CKR_DEVICE_ERROR,
          "event: host error on m01's slot, CKR_DEVICE_ERROR");
    rv = C_GetSessionInfo(s, &si);
    rv = C_GetTokenInfo(slot_b, &(CK_TOKEN_INFO){0});
    check(rv == CKR_DEVICE_ERROR && next_event(HAEXT_EV_HOST_ERROR, slot_b, &ev) && !next_event(HAEXT_EV_HOST_ERROR, slot_b, NULL),
          "unread errors on one slot coalesce into one event");
    rv = C_GetSlotList(CK_TRUE, list, &n);
    check(rv != CKR_DEVICE_ERROR || next_event(HAEXT_EV_HOST_ERROR, HAEXT_SLOT_NONE, NULL),
          "a failing C_GetSlotList is a host error with no slot (rv 0x%lx)", rv);
    drain_events();
    check(C_Finalize(NULL) == CKR_OK && next_event(HAEXT_EV_FINALIZED, HAEXT_SLOT_NONE, NULL),
          "the host re-initializes: finalized");
    rv = C_Initialize(NULL);
    check(rv == CKR_OK && next_event(HAEXT_EV_INITIALIZED, HAEXT_SLOT_NONE, NULL), "initialized (0x%lx)", rv);
    slot_b = slot_of("m01");
    check(slot_b != (CK_SLOT_ID)-1 && C_OpenSession(slot_b, CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK &&
              C_GetSessionInfo(s, &si) == CKR_OK,
          "m01 works again after the host's re-initialization");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    test_load();
    if (H == NULL) {
        note("vendor: %s", front_vendor_error());
        return done();
    }
    test_initialize();
    if (argc > 1 && strcmp(argv[1], "net-events") == 0) {
        test_net_events();
        C_Finalize(NULL);
        return done();
    }
    if (argc > 1 && strcmp(argv[1], "v3") == 0) {
        test_v3();
        C_Finalize(NULL);
        return done();
    }
    if (argc > 1 && strcmp(argv[1], "finalize-loop") == 0) {
        /* Only the loop, against whatever vendor is configured. */
        test_finalize_loop();
        C_Finalize(NULL);
        return done();
    }
    test_borrow();
    test_lend_waits();
    test_so_login();
    test_logout_on_last_close();
    test_init_token();
    test_close_waits_for_loan();
    test_gate();
    test_host_errors();
    test_fork();
    test_overflow();
    test_finalize_loop();
    C_Finalize(NULL);
    return done();
}
