/*
 * test_callback.c - CA_HAExtSetStateCallback as an application meets it,
 * on the p11-kit lab (each member a SoftHSM2 token behind its own p11-kit
 * server; the vendor module is p11-kit-proxy.so), while members are
 * stopped, resumed and killed:
 *
 *   test_callback beside | front
 *
 * beside: the host loads p11-kit-proxy.so and libhaext.so beside it.
 * front:  the host loads libhaext-pkcs11.so as its module, and its CA_*
 *         calls (the front forwards them to libhaext.so).
 *
 * The callback records every call: the member, the old and new status, the
 * context, the calling thread (its kernel id and name) and whether every
 * signal a thread can block is blocked on it. Checked: bad arguments; no
 * callback thread before the first registration, one after; the first
 * report sets the baseline and calls nothing; a stopped member seen
 * CKR_OK -> CKR_HA_TIMEOUT by the interval checks alone, and back to CKR_OK
 * after SIGCONT; a callback that sleeps 1 s delays no status call; a
 * replaced registration gets nothing after the call returned; interval 0:
 * changes only at the host's status calls; a fork child is refused and
 * runs no callback; after unregistering, no callback thread and no call
 * while members change; a callback that unregisters itself; in front, the
 * host's C_Finalize (every member CKR_HA_NO_INSTANCE) and C_Initialize
 * (back to CKR_OK) with the callback registered; a killed member; over the
 * whole run, every call on libhaext's thread, never a host thread, with
 * every signal blocked, and per member each change starting where the last
 * ended, never from a status to itself.
 *
 * Environment (test/c/run.sh): LIBHAEXT, HAEXT_FRONT, HALAB_MODULE,
 * HALAB_DIR, HALAB_SERIALS, HALAB_LAB_SH, HALAB_TIMEOUT_MS.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define MAX 32
#define UNKNOWN_SLOT ((CK_SLOT_ID)999999)
#define NREC 4096

typedef CK_RV (*set_cb_fn)(CK_SLOT_ID, CK_HA_STATE_CALLBACK, CK_ULONG, void *);

static struct host host;
static set_cb_fn set_cb;
static int nmembers;
static char serial_text[MAX][32];
static CK_ULONG serials[MAX];
static CK_SLOT_ID slots[MAX];
static double timeout_ms;

/* What the callback saw, one record per call. */
struct rec {
    CK_SLOT_ID slot;
    char serial[48];
    CK_RV old_status, new_status;
    int tag; /* *(int *)ctx */
    pid_t tid;
    int all_blocked;
    char comm[32];
};
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct rec recs[NREC];
static int nrec;
static atomic_int slow_ms;     /* the callback sleeps this long */
static atomic_int in_callback; /* set while the callback runs */
static pid_t host_tids[8];
static int nhost;

/* Contexts: which registration a call came from. */
static int tag_a = 1, tag_b = 2, tag_c = 3, tag_d = 4, tag_e = 5;
static CK_RV self_unregister_rv = (CK_RV)-1;
static int asked_in_callback;
static CK_RV status_in_callback = (CK_RV)-1;

static pid_t tid(void) { return (pid_t)syscall(SYS_gettid); }

/* Every signal a thread can block is blocked on the calling thread:
 * SIGKILL and SIGSTOP cannot be, and glibc keeps its two internal signals
 * (32, 33) out of every mask. */
static int every_signal_blocked(void)
{
    sigset_t cur;
    int s;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    for (s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP || s == 32 || s == 33) {
            continue;
        }
        if (!sigismember(&cur, s)) {
            return 0;
        }
    }
    return 1;
}

static void thread_name(pid_t t, char *out, size_t size)
{
    char path[64];
    FILE *f;
    snprintf(path, sizeof path, "/proc/self/task/%d/comm", (int)t);
    out[0] = 0;
    if ((f = fopen(path, "r")) != NULL) {
        if (fgets(out, (int)size, f) != NULL) {
            out[strcspn(out, "\n")] = 0;
        }
        fclose(f);
    }
}

/* Threads of this process named as libhaext's callback thread. */
static int callback_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int n = 0;
    if (d == NULL) {
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        char name[32];
        if (e->d_name[0] == '.') {
            continue;
        }
        thread_name((pid_t)atoi(e->d_name), name, sizeof name);
        n += strcmp(name, "haext-callback") == 0;
    }
    closedir(d);
    return n;
}

/* Waits up to ms for the number of callback threads to be want. */
static int await_callback_threads(int want, long ms)
{
    double t0 = now_ms();
    int n;
    while ((n = callback_threads()) != want && now_ms() - t0 < ms) {
        sleep_ms(10);
    }
    return n;
}

static void on_change(CK_SLOT_ID slot, const char *serial, CK_RV old_status, CK_RV new_status, void *ctx)
{
    struct rec r;
    int slow;
    atomic_store(&in_callback, 1);
    memset(&r, 0, sizeof r);
    r.slot = slot;
    snprintf(r.serial, sizeof r.serial, "%s", serial != NULL ? serial : "(null)");
    r.old_status = old_status;
    r.new_status = new_status;
    r.tag = ctx != NULL ? *(int *)ctx : 0;
    r.tid = tid();
    r.all_blocked = every_signal_blocked();
    thread_name(r.tid, r.comm, sizeof r.comm);
    pthread_mutex_lock(&mu);
    if (nrec < NREC) {
        recs[nrec++] = r;
    }
    pthread_mutex_unlock(&mu);
    if (r.tag == tag_a && !asked_in_callback) { /* libhaext holds no lock of its own here */
        CK_HA_STATUS st;
        asked_in_callback = 1;
        status_in_callback = host.get_state(slot, &st);
    }
    if (r.tag == tag_d) { /* unregisters itself, from its own call */
        self_unregister_rv = set_cb(slot, NULL, 0, NULL);
    }
    if ((slow = atomic_load(&slow_ms)) > 0) {
        sleep_ms(slow);
    }
    atomic_store(&in_callback, 0);
}

static int count_recs(void)
{
    int n;
    pthread_mutex_lock(&mu);
    n = nrec;
    pthread_mutex_unlock(&mu);
    return n;
}

/* Waits up to ms for a call, from index from on, about member m going
 * to a status that is CKR_OK (want_ok) or not; returns its index or -1,
 * and the new status in *got. */
static int await_change(int from, int m, int want_ok, long ms, CK_RV *got)
{
    double deadline = now_ms() + ms;
    int i = from;
    pthread_mutex_lock(&mu);
    for (;;) {
        for (; i < nrec; i++) {
            if (strcasecmp(recs[i].serial, serial_text[m]) == 0 && (recs[i].new_status == CKR_OK) == want_ok) {
                *got = recs[i].new_status;
                pthread_mutex_unlock(&mu);
                return i;
            }
        }
        if (now_ms() >= deadline) {
            break;
        }
        pthread_mutex_unlock(&mu);
        sleep_ms(10);
        pthread_mutex_lock(&mu);
    }
    pthread_mutex_unlock(&mu);
    return -1;
}

static void show_recs(int from)
{
    int i;
    pthread_mutex_lock(&mu);
    for (i = from; i < nrec; i++) {
        note("callback %d: slot %lu member %s %s -> %s (ctx %d, thread %d %s)", i, (unsigned long)recs[i].slot,
             recs[i].serial, status_name(recs[i].old_status), status_name(recs[i].new_status), recs[i].tag,
             (int)recs[i].tid, recs[i].comm);
    }
    pthread_mutex_unlock(&mu);
}

static int all_ok(void)
{
    CK_HA_STATUS st;
    int i;
    if (host.get_state(slots[0], &st) != CKR_OK || st.listSize != (CK_ULONG)nmembers) {
        return 0;
    }
    for (i = 0; i < nmembers; i++) {
        if (st.memberList[i].memberStatus != CKR_OK) {
            return 0;
        }
    }
    return 1;
}

static double wait_all_ok(double limit_ms)
{
    double t0 = now_ms();
    while (now_ms() - t0 < limit_ms) {
        if (all_ok()) {
            return now_ms() - t0;
        }
        sleep_ms(50);
    }
    return -1;
}

/* Status of member m in one status call, or (CK_RV)-1. */
static CK_RV member_status(int m, double *ms)
{
    CK_HA_STATUS st;
    CK_RV rv = timed_state(&host, slots[0], &st, ms);
    if (rv != CKR_OK || (int)st.listSize <= m) {
        return (CK_RV)-1;
    }
    return st.memberList[m].memberStatus;
}

static void last_reason(char *buf, size_t size)
{
    host.last_error(buf, (CK_ULONG)size);
}

/* ---- the parts ------------------------------------------------------ */

static void arguments(void)
{
    char why[256];
    int n;
    CK_RV rv = set_cb(UNKNOWN_SLOT, on_change, 200, &tag_a);
    last_reason(why, sizeof why);
    check(rv == CKR_SLOT_ID_INVALID, "a slot of no group: CKR_SLOT_ID_INVALID (%s: %.80s)", status_name(rv), why);
    rv = set_cb(slots[0], on_change, 50, &tag_a);
    last_reason(why, sizeof why);
    check(rv == CKR_ARGUMENTS_BAD && why[0] != 0, "intervalMs 50: CKR_ARGUMENTS_BAD (%s: %.80s)", status_name(rv),
          why);
    rv = set_cb(slots[0], on_change, LIBHAEXT_CALLBACK_INTERVAL_MAX_MS + 1, &tag_a);
    check(rv == CKR_ARGUMENTS_BAD, "intervalMs 3600001: CKR_ARGUMENTS_BAD (%s)", status_name(rv));
    rv = set_cb(slots[0], NULL, 0, NULL);
    check(rv == CKR_OK, "unregistering with nothing registered: CKR_OK (%s)", status_name(rv));
    n = await_callback_threads(0, 1000); /* the failed registrations' thread, if any, has ended */
    check(n == 0, "no callback thread before the first registration (%d)", n);
}

/* A fork child, while a callback is registered in the parent: refused,
 * with one thread and no callback. */
static void fork_child(void)
{
    int status = 0, before = count_recs();
    pid_t pid = fork();
    if (pid == 0) {
        CK_RV rv = set_cb(slots[0], on_change, 200, &tag_a);
        int threads;
        sleep_ms(400);
        threads = thread_count();
        /* nrec without the lock: a lock another thread held at the fork
         * stays held in the child, and no other thread is left. */
        _exit((rv == CKR_FUNCTION_FAILED ? 0 : 1) | (threads == 1 ? 0 : 2) | (nrec == before ? 0 : 4));
    }
    waitpid(pid, &status, 0);
    check(WIFEXITED(status) && (WEXITSTATUS(status) & 1) == 0,
          "a fork child's CA_HAExtSetStateCallback: CKR_FUNCTION_FAILED (exit %d)", WEXITSTATUS(status));
    check(WIFEXITED(status) && (WEXITSTATUS(status) & 6) == 0,
          "and the child has one thread and runs no callback (exit %d)", WEXITSTATUS(status));
}

/* The registrations a, b and c replaced one another and share the
 * baseline; d and e came after an unregistration, each with its own. */
static int epoch(int tag) { return tag == tag_b || tag == tag_c ? tag_a : tag; }

/* Every call over the run: libhaext's thread, never the host's, every
 * signal blocked; per member and baseline a chain of real changes. */
static void whole_run(void)
{
    int i, j, on_host = 0, unblocked = 0, misnamed = 0, broken = 0, same = 0;
    pthread_mutex_lock(&mu);
    for (i = 0; i < nrec; i++) {
        for (j = 0; j < nhost; j++) {
            on_host += recs[i].tid == host_tids[j];
        }
        unblocked += !recs[i].all_blocked;
        misnamed += strcmp(recs[i].comm, "haext-callback") != 0;
        same += recs[i].old_status == recs[i].new_status;
        for (j = i - 1; j >= 0; j--) {
            if (strcasecmp(recs[j].serial, recs[i].serial) == 0 && epoch(recs[j].tag) == epoch(recs[i].tag)) {
                broken += recs[j].new_status != recs[i].old_status;
                break;
            }
        }
        if (j < 0) {
            broken += recs[i].old_status != CKR_OK; /* every registration began with all CKR_OK */
        }
    }
    check(nrec > 0 && on_host == 0 && misnamed == 0,
          "all %d calls on libhaext's callback thread, none on a host thread (%d on a host thread, %d elsewhere)",
          nrec, on_host, misnamed);
    check(nrec > 0 && unblocked == 0, "every call with every signal blocked (%d not)", unblocked);
    check(nrec > 0 && broken == 0 && same == 0,
          "per member, every change starts where the last ended, the first from the baseline (CKR_OK) (%d broken, "
          "%d to itself)", broken,
          same);
    pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    double ms, worst = 0, t0;
    int i, k, n, calls, mark;
    CK_RV rv, got = 0, st;

    setvbuf(stdout, NULL, _IOLBF, 0);
    host_tids[nhost++] = tid();
    if (strcmp(mode, "beside") == 0) {
        host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    } else if (strcmp(mode, "front") == 0) {
        host_load(&host, need_env("HAEXT_FRONT"), need_env("HAEXT_FRONT"));
    } else {
        fprintf(stderr, "usage: %s beside|front\n", argv[0]);
        return 2;
    }
    set_cb = (set_cb_fn)dlsym(host.ha_handle, "CA_HAExtSetStateCallback");
    check(set_cb != NULL, "%s: the library exports CA_HAExtSetStateCallback", mode);
    if (set_cb == NULL) {
        return done();
    }
    nmembers = lab_members(serial_text, serials, MAX);
    timeout_ms = atof(need_env("HALAB_TIMEOUT_MS"));
    lab_slots(&host, serial_text, nmembers, slots);
    check(nmembers >= 3, "a group of %d members", nmembers);
    ms = wait_all_ok(5000);
    check(ms >= 0, "healthy group: every member CKR_OK (%.0f ms)", ms);

    arguments();

    /* Registered, with checks every 200 ms: the first report is the
     * baseline, and nothing changes. */
    t0 = now_ms();
    rv = set_cb(slots[0], on_change, 200, &tag_a);
    ms = now_ms() - t0;
    check(rv == CKR_OK, "registered with intervalMs 200 (%s, %.1f ms)", status_name(rv), ms);
    n = await_callback_threads(1, 1000);
    check(n == 1, "one callback thread once a callback is registered (%d)", n);
    sleep_ms(500);
    check(count_recs() == 0, "the baseline calls nothing while nothing changes (%d calls)", count_recs());

    /* Member 1 stops: the checks of libhaext's own find it, with no status
     * call of the host's. */
    mark = count_recs();
    lab_do("stop", 1);
    t0 = now_ms();
    k = await_change(mark, 1, 0, (long)(timeout_ms + 4000), &got);
    check(k >= 0 && got == CKR_HA_TIMEOUT && recs[k].old_status == CKR_OK && recs[k].tag == tag_a &&
              recs[k].slot == slots[0],
          "member 1 stopped: CKR_OK -> %s after %.0f ms, from the interval checks alone, with the registration's "
          "slot and ctx", k >= 0 ? status_name(got) : "nothing", now_ms() - t0);
    lab_do("cont", 1);
    t0 = now_ms();
    k = await_change(k >= 0 ? k + 1 : mark, 1, 1, 5000, &got);
    check(k >= 0, "member 1 resumed: -> CKR_OK after %.0f ms", now_ms() - t0);
    check(status_in_callback == CKR_OK, "a status call from within the callback returns (%s)",
          status_name(status_in_callback));

    /* A slow callback (1 s) delays no status call, and the changes that
     * wait for it arrive in order. */
    atomic_store(&slow_ms, 1000);
    mark = count_recs();
    lab_do("stop", 2);
    k = await_change(mark, 2, 0, (long)(timeout_ms + 4000), &got);
    check(k >= 0 && got == CKR_HA_TIMEOUT, "member 2 stopped: -> %s (the callback now sleeps 1 s)",
          k >= 0 ? status_name(got) : "nothing");
    calls = 0;
    t0 = now_ms();
    while (atomic_load(&in_callback) && now_ms() - t0 < 900) {
        member_status(0, &ms);
        worst = ms > worst ? ms : worst;
        calls++;
        sleep_ms(20);
    }
    check(calls >= 5 && worst <= timeout_ms + 300,
          "status calls while the callback sleeps: %d, the slowest %.1f ms (statusTimeout %.0f ms)", calls, worst,
          timeout_ms);
    lab_do("cont", 2);
    k = await_change(k >= 0 ? k + 1 : mark, 2, 1, 6000, &got);
    check(k >= 0, "member 2 resumed: -> CKR_OK, after the slow call");
    atomic_store(&slow_ms, 0);

    /* Replaced through another slot of the group, with another ctx: the
     * old one is called no more once the call returned; the baseline
     * stays. */
    rv = set_cb(slots[1], on_change, 200, &tag_b);
    check(rv == CKR_OK, "re-registered through member 1's slot with another ctx (%s)", status_name(rv));
    mark = count_recs();
    lab_do("stop", 1);
    t0 = now_ms();
    k = await_change(mark, 1, 0, (long)(timeout_ms + 4000), &got);
    check(k >= 0 && recs[k].tag == tag_b && recs[k].slot == slots[1] && recs[k].old_status == CKR_OK,
          "member 1 stopped: CKR_OK -> %s after %.0f ms, to the new ctx and slot",
          k >= 0 ? status_name(got) : "nothing", now_ms() - t0);
    lab_do("cont", 1);
    k = await_change(k >= 0 ? k + 1 : mark, 1, 1, 5000, &got);
    check(k >= 0, "member 1 resumed: -> CKR_OK");
    pthread_mutex_lock(&mu);
    for (i = mark, n = 0; i < nrec; i++) {
        n += recs[i].tag != tag_b;
    }
    pthread_mutex_unlock(&mu);
    check(n == 0, "no call to the replaced registration after it was replaced (%d)", n);

    fork_child();

    /* Interval 0: changes only at the host's status calls. */
    rv = set_cb(slots[0], on_change, 0, &tag_c);
    check(rv == CKR_OK, "re-registered with intervalMs 0 (%s)", status_name(rv));
    sleep_ms(300); /* a check in flight ends */
    mark = count_recs();
    lab_do("stop", 1);
    sleep_ms(1000);
    n = count_recs() - mark;
    check(n == 0, "intervalMs 0: no call without a status call of the host's while member 1 is stopped (%d)", n);
    st = member_status(1, &ms);
    k = await_change(mark, 1, 0, 1000, &got);
    check(k >= 0 && recs[k].tag == tag_c && st == got,
          "the host's status call reports member 1 %s and the callback follows: -> %s", status_name(st),
          k >= 0 ? status_name(got) : "nothing");
    lab_do("cont", 1);
    t0 = now_ms();
    do {
        sleep_ms(100);
        st = member_status(1, &ms);
    } while (st != CKR_OK && now_ms() - t0 < 5000);
    k = await_change(k >= 0 ? k + 1 : mark, 1, 1, 1000, &got);
    check(k >= 0, "member 1 resumed: the host's status call, then the callback -> CKR_OK");

    /* Unregistered: no callback thread, no call while members change. */
    rv = set_cb(slots[2], NULL, 0, NULL);
    check(rv == CKR_OK, "unregistered through member 2's slot (%s)", status_name(rv));
    n = await_callback_threads(0, 1000);
    check(n == 0, "no callback thread after the last callback was unregistered (%d)", n);
    mark = count_recs();
    lab_do("stop", 1);
    for (i = 0; i < 4; i++) {
        member_status(1, &ms);
        sleep_ms(150);
    }
    lab_do("cont", 1);
    for (i = 0; i < 4; i++) {
        member_status(1, &ms);
        sleep_ms(150);
    }
    n = count_recs() - mark;
    check(n == 0 && callback_threads() == 0,
          "while member 1 stops and resumes and the host asks: no call, no callback thread (%d calls, %d threads)",
          n, callback_threads());
    ms = wait_all_ok(5000);
    check(ms >= 0, "every member CKR_OK again (%.0f ms)", ms);

    /* A callback that unregisters itself, from its own call. */
    rv = set_cb(slots[0], on_change, 200, &tag_d);
    check(rv == CKR_OK, "registered a callback that unregisters itself (%s)", status_name(rv));
    sleep_ms(400);
    mark = count_recs();
    lab_do("stop", 1);
    k = await_change(mark, 1, 0, (long)(timeout_ms + 4000), &got);
    n = await_callback_threads(0, 2000);
    check(k >= 0 && self_unregister_rv == CKR_OK && n == 0,
          "it was called (%s), its CA_HAExtSetStateCallback(NULL) returned %s, and the thread ended (%d)",
          k >= 0 ? status_name(got) : "nothing", status_name(self_unregister_rv), n);
    lab_do("cont", 1);
    sleep_ms(500);
    check(count_recs() == mark + 1, "and it was called once (%d)", count_recs() - mark);
    ms = wait_all_ok(5000);
    check(ms >= 0, "every member CKR_OK again (%.0f ms)", ms);

    /* A killed member (its p11-kit-remote; the server stays up). */
    rv = set_cb(slots[0], on_change, 200, &tag_e);
    check(rv == CKR_OK, "registered again (%s)", status_name(rv));
    sleep_ms(500);
    if (strcmp(mode, "front") == 0) {
        /* In front of the module, libhaext uses the host's instance: the
         * host's C_Finalize makes every member CKR_HA_NO_INSTANCE, its
         * C_Initialize brings them back, and the callback stays. */
        CK_C_INITIALIZE_ARGS args;
        int fin = 0, back = 0;
        mark = count_recs();
        rv = host.p11->C_Finalize(NULL);
        for (i = 0; i < nmembers; i++) {
            k = await_change(mark, i, 0, (long)(timeout_ms + 3000), &got);
            fin += k >= 0 && got == CKR_HA_NO_INSTANCE;
        }
        check(rv == CKR_OK && fin == nmembers, "the host's C_Finalize: %d of %d members -> CKR_HA_NO_INSTANCE", fin,
              nmembers);
        memset(&args, 0, sizeof args);
        args.flags = CKF_OS_LOCKING_OK;
        mark = count_recs();
        rv = host.p11->C_Initialize(&args);
        for (i = 0; i < nmembers; i++) {
            k = await_change(mark, i, 1, 8000, &got);
            back += k >= 0;
        }
        check(rv == CKR_OK && back == nmembers, "and its C_Initialize: %d of %d members -> CKR_OK", back, nmembers);
    }
    mark = count_recs();
    lab_do("kill", 2);
    t0 = now_ms();
    k = await_change(mark, 2, 0, (long)(timeout_ms + 4000), &got);
    check(k >= 0 && recs[k].old_status == CKR_OK && recs[k].tag == tag_e,
          "member 2 killed: CKR_OK -> %s after %.0f ms", k >= 0 ? status_name(got) : "nothing", now_ms() - t0);
    rv = set_cb(slots[0], NULL, 0, NULL);
    n = await_callback_threads(0, 1000);
    check(rv == CKR_OK && n == 0, "unregistered (%s), no callback thread (%d)", status_name(rv), n);

    show_recs(0);
    whole_run();
    return done();
}
