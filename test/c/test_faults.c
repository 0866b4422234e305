/*
 * test_faults.c - CA_GetCurrentHAState while networked members die, hang and
 * come back. Members are SoftHSM2 tokens, each behind its own p11-kit server;
 * the vendor module is p11-kit-proxy.so (or OpenSC's pkcs11-spy.so in front
 * of it). Faults are real: test/lab/lab.sh signals the member's
 * p11-kit-remote process.
 *
 *   test_faults SCENARIO     killed | killed-noep | hung | closeall |
 *                            reinit | spy | stress | lend | lend-late | percaller
 *
 * Environment (from test/c/run.sh): LIBHAEXT, HALAB_MODULE, HALAB_DIR,
 * HALAB_SERIALS, HALAB_LAB_SH, HALAB_TIMEOUT_MS; for spy: HALAB_SPY_LOG.
 * The process keeps SIGPIPE at its default action throughout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define MAX 32

static struct host host;
static int sigpipe_was_default;
static int nmembers;
static char serial_text[MAX][32];
static CK_ULONG serials[MAX];
static CK_SLOT_ID slots[MAX];
static double timeout_ms;

/* thread_sigpipe_blocked reports whether SIGPIPE is blocked on the calling
 * thread. */
static int thread_sigpipe_blocked(void)
{
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    return sigismember(&cur, SIGPIPE);
}

/* host_guard_sigpipe blocks SIGPIPE on the calling thread (on) or drains a
 * pending one and unblocks it (off). */
static void host_guard_sigpipe(int on)
{
    sigset_t set;
    struct timespec zero = {0, 0};
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (on) {
        pthread_sigmask(SIG_BLOCK, &set, NULL);
        return;
    }
    while (sigtimedwait(&set, NULL, &zero) == SIGPIPE) {
    }
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* lab applies a fault to a member; a failure is noted, not fatal (a killed
 * member has no process left to stop, say). */

/* call makes one status call on the group; it returns its CK_RV and its
 * duration. */
static CK_RV call(CK_HA_STATUS *st, double *ms)
{
    return timed_state(&host, slots[0], st, ms);
}

/* well_formed: the report lists every member, in order, with a documented
 * status. */
static int well_formed(const CK_HA_STATUS *st)
{
    int i;
    if (st->listSize != (CK_ULONG)nmembers) {
        return 0;
    }
    for (i = 0; i < nmembers; i++) {
        if (st->memberList[i].memberSerial != serials[i] ||
            !status_is_documented(st->memberList[i].memberStatus)) {
            return 0;
        }
    }
    return 1;
}

/* others_ok: every member but skip is CKR_OK. */
static int others_ok(const CK_HA_STATUS *st, int skip)
{
    int i;
    for (i = 0; i < nmembers; i++) {
        if (i != skip && st->memberList[i].memberStatus != CKR_OK) {
            return 0;
        }
    }
    return 1;
}

static void show(const char *what, const CK_HA_STATUS *st, double ms)
{
    char line[512];
    int i, n = snprintf(line, sizeof line, "%s (%.1f ms):", what, ms);
    for (i = 0; i < (int)st->listSize && i < MAX && n < (int)sizeof line; i++) {
        n += snprintf(line + n, sizeof line - n, " %s", status_name(st->memberList[i].memberStatus));
    }
    note("%s", line);
}

/* wait_all_ok polls until every member is CKR_OK; it returns the time that
 * took in ms, or -1 after limit_ms. */
static double wait_all_ok(double limit_ms)
{
    CK_HA_STATUS st;
    double t0 = now_ms();
    while (now_ms() - t0 < limit_ms) {
        if (call(&st, NULL) == CKR_OK && others_ok(&st, -1)) {
            return now_ms() - t0;
        }
        sleep_ms(20);
    }
    show("still not all OK", &st, 0);
    return -1;
}

static void start_healthy(void)
{
    CK_HA_STATUS st;
    double ms;
    CK_RV rv = call(&st, &ms);
    show("first call", &st, ms);
    check(rv == CKR_OK && well_formed(&st) && others_ok(&st, -1), "healthy group: all %d members CKR_OK",
          nmembers);
}

/* Fault 1: a killed member is seen by stage 2, nothing is sent to it. */
static void scenario_killed(void)
{
    CK_HA_STATUS st;
    double ms, worst = 0;
    int i, all = 1;
    start_healthy();
    lab_do("kill", 1);
    sleep_ms(100);
    for (i = 0; i < 10; i++) {
        CK_RV rv = call(&st, &ms);
        if (i == 0) {
            show("member 1 killed", &st, ms);
        }
        all &= rv == CKR_OK && st.memberList[1].memberStatus == CKR_HA_SOCKET_DOWN && others_ok(&st, 1);
        worst = ms > worst ? ms : worst;
    }
    check(all, "killed member -> CKR_HA_SOCKET_DOWN, others CKR_OK (10 calls)");
    check(worst < timeout_ms / 4, "reported well under statusTimeout (worst %.1f ms)", worst);
}

/* Fault 2: no endpoints: the lightweight call meets the dead socket. p11-kit
 * shares one connection per member among all callers, and only the first
 * write after the member died raises SIGPIPE; so member 2 is killed for the
 * host's control call and member 1 for the library alone. */
static void scenario_killed_noep(void)
{
    CK_HA_STATUS st;
    CK_SESSION_HANDLE hs;
    double ms;
    int raised, i;
    CK_RV rv;

    check(sigpipe_was_default, "the host keeps SIGPIPE at the kernel's default action (set after loading libhaext.so)");
    check(thread_sigpipe_blocked() == 0, "and does not block it on its own threads");
    start_healthy();
    check(host.p11->C_OpenSession(slots[2], CKF_SERIAL_SESSION, NULL, NULL, &hs) == CKR_OK,
          "host opens its own session on member 2");
    lab_do("kill", 1);
    lab_do("kill", 2);
    sleep_ms(100);

    /* Control: the first call to a dead member raises SIGPIPE, which at the
     * default action kills the process. The host makes one such call with
     * SIGPIPE blocked and finds the signal pending. (p11-kit refuses calls
     * in a fork child, so a child cannot show it.) */
    {
        CK_SESSION_INFO si;
        sigset_t pending;
        host_guard_sigpipe(1);
        rv = host.p11->C_GetSessionInfo(hs, &si);
        sigpending(&pending);
        raised = sigismember(&pending, SIGPIPE);
        host_guard_sigpipe(0);
        check(raised, "control: the first call to a dead member raises SIGPIPE (host's guarded call, %s)",
              status_name(rv));
    }

    /* The library's call is the first write to member 1's dead socket. */
    rv = call(&st, &ms);
    show("members 1 and 2 killed, no endpoints", &st, ms);
    check(rv == CKR_OK && st.memberList[0].memberStatus == CKR_OK, "the host survived; member 0 CKR_OK");
    for (i = 1; i <= 2; i++) {
        CK_RV m = st.memberList[i].memberStatus;
        check(m != CKR_OK && m != CKR_HA_TIMEOUT && m != CKR_HA_SOCKET_DOWN && m != CKR_HA_NO_INSTANCE,
              "member %d gets the module's error (%s)", i, status_name(m));
    }
    check(ms < timeout_ms / 4, "reported fast (%.1f ms)", ms);
    rv = call(&st, &ms);
    check(rv == CKR_OK && well_formed(&st), "and keeps getting reports");
}

struct hang_caller {
    pthread_t t;
    int bad;
    double worst;
};

static void *hang_caller_main(void *arg)
{
    struct hang_caller *c = arg;
    int i;
    for (i = 0; i < 5; i++) {
        CK_HA_STATUS st;
        double ms;
        CK_RV rv = call(&st, &ms);
        if (rv != CKR_OK || st.memberList[1].memberStatus != CKR_HA_TIMEOUT || !others_ok(&st, 1)) {
            c->bad++;
        }
        c->worst = ms > c->worst ? ms : c->worst;
    }
    return NULL;
}

/* Fault 3: a hung member times out; callers do not pile up. */
static void scenario_hung(void)
{
    CK_HA_STATUS st;
    struct hang_caller callers[16];
    double ms, worst = 0, back;
    int i, bad = 0, threads_before, threads_peak = 0;
    CK_RV rv;

    start_healthy();
    threads_before = thread_count();
    lab_do("stop", 1);
    rv = call(&st, &ms);
    show("member 1 stopped", &st, ms);
    check(rv == CKR_OK && st.memberList[1].memberStatus == CKR_HA_TIMEOUT && others_ok(&st, 1),
          "hung member -> CKR_HA_TIMEOUT, others CKR_OK");
    check(ms >= timeout_ms - 50 && ms <= timeout_ms + 200, "reported at statusTimeout (%.0f ms, timeout %.0f)",
          ms, timeout_ms);

    /* The stuck call is now older than statusTimeout: no more waiting. */
    for (i = 0; i < 10; i++) {
        call(&st, &ms);
        worst = ms > worst ? ms : worst;
        bad += st.memberList[1].memberStatus != CKR_HA_TIMEOUT;
    }
    check(bad == 0 && worst < 100, "10 more calls during the hang: CKR_HA_TIMEOUT at once (worst %.1f ms)", worst);

    for (i = 0; i < 16; i++) {
        memset(&callers[i], 0, sizeof callers[i]);
        pthread_create(&callers[i].t, NULL, hang_caller_main, &callers[i]);
    }
    for (i = 0; i < 16; i++) {
        int n = thread_count() - 16;
        threads_peak = n > threads_peak ? n : threads_peak;
        pthread_join(callers[i].t, NULL);
        bad += callers[i].bad;
        worst = callers[i].worst > worst ? callers[i].worst : worst;
    }
    check(bad == 0 && worst <= timeout_ms + 200,
          "16 threads x 5 calls during the hang: all CKR_HA_TIMEOUT, none later than statusTimeout (worst %.1f ms)",
          worst);
    check(thread_count() <= threads_before + 4 && threads_peak <= threads_before + 4,
          "thread count bounded: %d before the hang, %d peak (callers excluded), %d after", threads_before,
          threads_peak, thread_count());

    lab_do("cont", 1);
    back = wait_all_ok(3000);
    check(back >= 0 && back < 1000, "after SIGCONT the member is CKR_OK again within a second (%.0f ms)", back);
}

/* Fault 4: the host closes all sessions on a member's slot. */
static void scenario_closeall(void)
{
    CK_HA_STATUS st;
    double ms, back;
    CK_RV rv;
    long n;
    int i, one_each = 1;

    start_healthy();
    check(host.p11->C_CloseAllSessions(slots[1]) == CKR_OK, "host calls C_CloseAllSessions on member 1's slot");
    rv = call(&st, &ms);
    show("after C_CloseAllSessions", &st, ms);
    check(rv == CKR_OK && st.memberList[1].memberStatus != CKR_OK && others_ok(&st, 1),
          "member 1 reported down (%s), others CKR_OK", status_name(st.memberList[1].memberStatus));
    back = wait_all_ok(5000);
    check(back >= 0, "recovery re-opened the monitor session with no action from the host (%.0f ms)", back);
    for (i = 0; i < nmembers; i++) {
        n = sessions_on_slot(&host, slots[i], 64);
        if (n != 1) {
            note("member %d: %ld sessions", i, n);
            one_each = 0;
        }
    }
    check(one_each, "one monitor session per member afterwards");
}

/* Between the host's C_Finalize and its C_Initialize, a member's slot
 * gets either a report whose members are all CKR_HA_NO_INSTANCE, or
 * CKR_FUNCTION_FAILED with the reason; never CKR_SLOT_ID_INVALID. */
static void finalize_window(void)
{
    CK_HA_STATUS st;
    char why[256];
    int i, k, ok = 1, calls = 0;

    for (k = 0; k < 3; k++) {
        for (i = 0; i < nmembers; i++) {
            CK_RV rv = host.get_state(slots[i], &st);
            calls++;
            if (rv == CKR_OK) {
                CK_ULONG j;
                for (j = 0; j < st.listSize; j++) {
                    if (st.memberList[j].memberStatus != CKR_HA_NO_INSTANCE) {
                        note("slot %lu in the finalize window: member %lu %s", (unsigned long)slots[i],
                             (unsigned long)j, status_name(st.memberList[j].memberStatus));
                        ok = 0;
                    }
                }
            } else if (rv == CKR_FUNCTION_FAILED) {
                ok &= host.last_error(why, sizeof why) > 0;
            } else {
                note("slot %lu in the finalize window: %s", (unsigned long)slots[i], status_name(rv));
                ok = 0;
            }
        }
        sleep_ms(300);
    }
    check(ok, "finalize window: %d calls on members' slots, each CKR_HA_NO_INSTANCE or CKR_FUNCTION_FAILED "
              "with the reason, none CKR_SLOT_ID_INVALID", calls);
}

/* Fault 5: a killed member whose server is still up. p11-kit's client does
 * not reconnect until the module is initialized again, which is the host's
 * decision: the library reports the member down, never finalizes the
 * host's module, and follows when the host re-initializes. */
static void scenario_reinit(void)
{
    CK_HA_STATUS st;
    CK_SESSION_HANDLE hs;
    CK_SESSION_INFO si;
    CK_C_INITIALIZE_ARGS args;
    double ms = 0, t0, back;
    int down = 1;
    CK_RV rv;

    start_healthy();
    check(host.p11->C_OpenSession(slots[0], CKF_SERIAL_SESSION, NULL, NULL, &hs) == CKR_OK,
          "host opens its own session on member 0");
    lab_do("kill", 1);
    t0 = now_ms();
    while (now_ms() - t0 < timeout_ms + 2500) {
        rv = call(&st, &ms);
        down &= rv == CKR_OK && st.memberList[1].memberStatus != CKR_OK && others_ok(&st, 1) &&
                ms < timeout_ms + 200;
        sleep_ms(50);
    }
    show("member 1 killed, server up", &st, ms);
    check(down, "the member stays reported down while the module is not re-initialized");
    check(host.p11->C_GetSessionInfo(hs, &si) == CKR_OK,
          "the host's own session still works: the library did not finalize the module");

    /* The host's own C_Finalize writes to the dead member: guarding that
     * is the host's business, as the library guards its own calls. */
    host_guard_sigpipe(1);
    host.p11->C_Finalize(NULL);
    finalize_window();
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    rv = host.p11->C_Initialize(&args);
    host_guard_sigpipe(0);
    check(rv == CKR_OK || rv == CKR_CRYPTOKI_ALREADY_INITIALIZED, "host re-initializes its module (%s)",
          status_name(rv));
    back = wait_all_ok(8000);
    check(back >= 0, "after the host's re-initialization every member is CKR_OK again (%.0f ms)", back);

}

/* The host re-initializes its module after a member's connection died,
 * and then wants every member back (scenarios lend and percaller). */
static CK_RV host_reinitialize(void)
{
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;
    host_guard_sigpipe(1);
    host.p11->C_Finalize(NULL);
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    rv = host.p11->C_Initialize(&args);
    host_guard_sigpipe(0);
    return rv;
}

/* Kills member 1 and waits until it is reported down. */
static void kill_member_1(void)
{
    CK_HA_STATUS st;
    double ms = 0, t0 = now_ms();
    CK_RV rv;
    int down = 0;
    lab_do("kill", 1);
    while (!down && now_ms() - t0 < timeout_ms + 2500) {
        rv = call(&st, &ms);
        down = rv == CKR_OK && st.memberList[1].memberStatus != CKR_OK && others_ok(&st, 1);
        sleep_ms(50);
    }
    show("member 1 killed", &st, ms);
    check(down, "member 1 reported down, the others CKR_OK");
}

/* Fault 8: p11-kit-proxy gives every C_GetFunctionList caller its own
 * instance. The host lends libhaext its own with CA_SetHAExtFunctionList,
 * before the first status call or (late) after it, when libhaext already
 * runs an instance of its own and must let it go: after a member's
 * connection died, the host's C_Finalize + C_Initialize succeeds and every
 * member comes back. */
static void scenario_lend(int late)
{
    CK_RV (*lend)(CK_FUNCTION_LIST_PTR) = (CK_RV(*)(CK_FUNCTION_LIST_PTR))dlsym(host.ha_handle,
                                                                              "CA_SetHAExtFunctionList");
    char why[512];
    double back;
    CK_RV rv;

    check(lend != NULL, "libhaext.so exports CA_SetHAExtFunctionList");
    if (lend == NULL) {
        return;
    }
    check(lend(NULL) == CKR_ARGUMENTS_BAD, "CA_SetHAExtFunctionList(NULL) is CKR_ARGUMENTS_BAD");
    if (late) {
        start_healthy(); /* on an instance of libhaext's own */
    }
    check(lend(host.p11) == CKR_OK, "the host lends libhaext its function list%s", late ? ", late" : "");
    start_healthy();
    if (!late) {
        check(host.last_error(why, sizeof why) == 0 || strstr(why, "CA_SetHAExtFunctionList") == NULL,
              "no notice about an instance of libhaext's own");
    }
    kill_member_1();
    rv = host_reinitialize();
    check(rv == CKR_OK, "the host's C_Finalize + C_Initialize succeeds (%s)", status_name(rv));
    back = wait_all_ok(5000);
    check(back >= 0, "every member CKR_OK again within 5 s (%.0f ms)", back);
}

/* Fault 9: the same module without lending: libhaext says, once, that it
 * runs an instance of its own. */
static void scenario_percaller(void)
{
    char why[512];
    CK_RV rv;

    start_healthy();
    check(host.last_error(why, sizeof why) > 0 && strstr(why, "CA_SetHAExtFunctionList") != NULL,
          "the first report comes with the notice that the module gives each caller its own instance");
    note("last error: %s", why);
    kill_member_1();
    rv = host_reinitialize();
    note("without lending, the host's re-initialization answers %s", status_name(rv));
}

static long count_lines(const char *log)
{
    char line[512];
    long n = 0;
    FILE *f = fopen(log, "r");
    if (!f) {
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        n++;
    }
    fclose(f);
    return n;
}

static int count_calls(const char *log, const char *fn)
{
    char line[512], want[64];
    int n = 0;
    FILE *f = fopen(log, "r");
    if (!f) {
        return -1;
    }
    snprintf(want, sizeof want, ": %s\n", fn);
    while (fgets(line, sizeof line, f)) {
        char *p = strstr(line, want);
        n += p != NULL && p[strlen(want)] == 0;
    }
    fclose(f);
    return n;
}

/* Fault 6: orphan sessions, proved from pkcs11-spy's log. */
static void scenario_spy(void)
{
    const char *log = need_env("HALAB_SPY_LOG");
    CK_HA_STATUS st;
    int opens, closes, i, one_each = 1, bad = 0;
    long n;

    start_healthy();
    opens = count_calls(log, "C_OpenSession");
    closes = count_calls(log, "C_CloseSession");
    note("spy log after start: %d C_OpenSession, %d C_CloseSession", opens, closes);
    check(opens == nmembers, "the library opened one monitor session per member (%d)", opens);
    for (i = 0; i < 200; i++) {
        bad += call(&st, NULL) != CKR_OK || !others_ok(&st, -1);
    }
    check(bad == 0, "200 status calls, all CKR_OK");
    check(count_calls(log, "C_OpenSession") == opens && count_calls(log, "C_CloseSession") == closes,
          "200 status calls added zero C_OpenSession and zero C_CloseSession");

    /* Faults and recovery. */
    host.p11->C_CloseAllSessions(slots[1]);
    lab_do("stop", 2);
    call(&st, NULL);
    lab_do("cont", 2);
    check(wait_all_ok(5000) >= 0, "all members recovered after C_CloseAllSessions and a hang");
    for (i = 0; i < nmembers; i++) {
        n = sessions_on_slot(&host, slots[i], 64);
        if (n != 1) {
            note("member %d: %ld sessions", i, n);
            one_each = 0;
        }
    }
    check(one_each, "sessions open on each token equal the monitor sessions: nothing leaked");
    note("spy log now: %d C_OpenSession, %d C_CloseSession, %d C_CloseAllSessions",
         count_calls(log, "C_OpenSession"), count_calls(log, "C_CloseSession"),
         count_calls(log, "C_CloseAllSessions"));
    check(count_calls(log, "C_OpenSession") == opens + 1, "exactly one session re-opened by recovery");
    check(count_calls(log, "C_Finalize") == 0, "no C_Finalize was ever called");

    /* Nothing asks and every member is healthy: no vendor call at all in
     * the background (the window for a host's C_Finalize stays shut). */
    {
        long before = count_lines(log), after;
        sleep_ms(3000);
        after = count_lines(log);
        check(after == before, "3 s idle with every member healthy: no vendor call (spy log %ld -> %ld lines)",
              before, after);
    }
}

/* Fault 7: stress under a seeded fault script. */
static volatile int stress_running = 1;

struct stresser {
    pthread_t t;
    long calls, bad;
};

static void *stresser_main(void *arg)
{
    struct stresser *s = arg;
    while (stress_running) {
        CK_HA_STATUS st;
        CK_RV rv = call(&st, NULL);
        s->calls++;
        if (rv != CKR_OK || !well_formed(&st)) {
            s->bad++;
        }
    }
    return NULL;
}

static void scenario_stress(void)
{
    struct stresser s[32];
    unsigned seed = (unsigned)strtoul(getenv("HAEXT_STRESS_SEED") ? getenv("HAEXT_STRESS_SEED") : "42", NULL, 10);
    double t0, seconds = 20;
    long calls = 0, bad = 0;
    int i, stopped[MAX] = {0}, killed = 0, threads_warm, threads_end;
    long rss_warm, rss_end;

    start_healthy();
    note("fault script seed %u", seed);
    for (i = 0; i < 32; i++) {
        memset(&s[i], 0, sizeof s[i]);
        pthread_create(&s[i].t, NULL, stresser_main, &s[i]);
    }
    sleep_ms(1000);
    threads_warm = thread_count();
    rss_warm = rss_kib();
    t0 = now_ms();
    while (now_ms() - t0 < seconds * 1000) {
        int m = rand_r(&seed) % nmembers, action = rand_r(&seed) % 10;
        if (action < 6) {
            lab_do(stopped[m] ? "cont" : "stop", m);
            stopped[m] = !stopped[m];
        } else if (action == 6 && killed < 2 && !stopped[m]) {
            lab_do("kill", m);
            killed++;
        }
        sleep_ms(200 + rand_r(&seed) % 600);
    }
    for (i = 0; i < nmembers; i++) {
        if (stopped[i]) {
            lab_do("cont", i);
        }
    }
    sleep_ms((long)timeout_ms + 1000);
    threads_end = thread_count();
    rss_end = rss_kib();
    stress_running = 0;
    for (i = 0; i < 32; i++) {
        pthread_join(s[i].t, NULL);
        calls += s[i].calls;
        bad += s[i].bad;
    }
    note("%ld calls in %.0f s by 32 threads; %d members killed", calls, seconds, killed);
    note("threads %d -> %d, RSS %ld -> %ld KiB", threads_warm, threads_end, rss_warm, rss_end);
    check(bad == 0 && calls > 0, "every report well-formed: listSize %d, documented statuses (%ld bad of %ld)",
          nmembers, bad, calls);
    check(threads_end <= threads_warm + nmembers, "thread count flat (%d -> %d)", threads_warm, threads_end);
    check(rss_end <= rss_warm + 16 * 1024, "RSS flat (%ld -> %ld KiB)", rss_warm, rss_end);
}

int main(int argc, char **argv)
{
    const char *scenario = argc > 1 ? argv[1] : "";

    setvbuf(stdout, NULL, _IOLBF, 0);
    nmembers = lab_members(serial_text, serials, MAX);
    timeout_ms = atof(need_env("HALAB_TIMEOUT_MS"));

    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    /* The host sets SIGPIPE to the kernel's default action after loading
     * the libraries, as daemons that reset their signals at start do. This
     * replaces the handler the Go runtime installed when libhaext.so loaded
     * (which would forgive a SIGPIPE raised in a Go thread): a SIGPIPE the
     * library let through would now kill the host. A parent (a shell,
     * timeout, CI) may also have handed SIGPIPE down ignored. */
    {
        struct sigaction sa;
        signal(SIGPIPE, SIG_DFL);
        sigaction(SIGPIPE, NULL, &sa);
        sigpipe_was_default = sa.sa_handler == SIG_DFL;
    }
    lab_slots(&host, serial_text, nmembers, slots);
    if (strcmp(scenario, "killed") == 0) {
        scenario_killed();
    } else if (strcmp(scenario, "lend") == 0) {
        scenario_lend(0);
    } else if (strcmp(scenario, "lend-late") == 0) {
        scenario_lend(1);
    } else if (strcmp(scenario, "percaller") == 0) {
        scenario_percaller();
    } else if (strcmp(scenario, "killed-noep") == 0) {
        scenario_killed_noep();
    } else if (strcmp(scenario, "hung") == 0) {
        scenario_hung();
    } else if (strcmp(scenario, "closeall") == 0) {
        scenario_closeall();
    } else if (strcmp(scenario, "reinit") == 0) {
        scenario_reinit();
    } else if (strcmp(scenario, "spy") == 0) {
        scenario_spy();
    } else if (strcmp(scenario, "stress") == 0) {
        scenario_stress();
    } else {
        fprintf(stderr, "usage: %s killed|killed-noep|hung|closeall|reinit|spy|stress|lend|lend-late|percaller\n", argv[0]);
        return 2;
    }
    return done();
}
