/*
 * test_capi.c - what the C entry points promise the host's threads and
 * processes, on a real SoftHSM2 group:
 *
 *  - masks: every export returns with the calling thread's signal mask
 *    exactly as it was, on the thread's first call and on later ones, and
 *    loading the library leaves the loading thread's mask alone; the Go
 *    runtime's own threads keep blocked every signal the runtime lets a C
 *    library block;
 *  - last error: per thread, set by a failing call, cleared by a
 *    succeeding one;
 *  - fork: in a child that fork() created after the library was loaded,
 *    every status call answers CKR_FUNCTION_FAILED at once, with the
 *    reason, and the parent goes on working.
 *
 * `test_capi fork-in-call` runs only the fork fence's test instead: the
 * vendor module is test/shim/delayshim.c over SoftHSM2, which makes every
 * call under one module-wide mutex (DELAYSHIM_LOCK=1) and delays
 * C_GetSessionInfo, libhaext's stage-3 call (DELAYSHIM_ONLY). The host
 * forks while libhaext's call is inside the module: the child's own vendor
 * call must not find that mutex held by a thread it does not have, and
 * fork() must not wait for a call that looks hung.
 *
 * Environment (test/c/run.sh and the lab): LIBHAEXT, HALAB_MODULE,
 * HALAB_SERIALS, HALAB_GROUP_SERIAL, ChrystokiConfigurationPath.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

#define MAX 32

static struct host host;
static int nmembers;
static CK_SLOT_ID slots[MAX];
static ha_state_fn get_state_sa6; /* CA_GetCurrentHAState_SA6 (1056 bytes) */
static ha_state_fn get_state_legacy_sa6;

/* Room for either layout. */
union report {
    CK_HA_STATUS classic;
    unsigned char bytes[1056];
};

static void mask_names(const sigset_t *a, const sigset_t *b, char *out, size_t size)
{
    int s, n = 0;
    out[0] = 0;
    for (s = 1; s < NSIG && n < (int)size - 16; s++) {
        if (sigismember(a, s) != sigismember(b, s)) {
            n += snprintf(out + n, size - n, " %d%s", s, sigismember(b, s) ? "+" : "-");
        }
    }
}

static int same_mask(const sigset_t *a, const sigset_t *b)
{
    int s;
    for (s = 1; s < NSIG; s++) {
        if (sigismember(a, s) != sigismember(b, s)) {
            return 0;
        }
    }
    return 1;
}

/* ---- masks ------------------------------------------------------------ */

struct mask_case {
    const char *name;
    sigset_t mask;
    int bad; /* calls after which the mask differed */
    char diff[256];
};

/* One export call, then a comparison of the thread's mask with before. */
#define AFTER(call, what)                                                               \
    do {                                                                                \
        sigset_t now_;                                                                  \
        (void)(call);                                                                   \
        pthread_sigmask(SIG_SETMASK, NULL, &now_);                                      \
        if (!same_mask(&mc->mask, &now_)) {                                             \
            char d_[200];                                                               \
            mask_names(&mc->mask, &now_, d_, sizeof d_);                                \
            if (!mc->bad++) {                                                           \
                snprintf(mc->diff, sizeof mc->diff, "after %s: changed%s", what, d_);   \
            }                                                                           \
            pthread_sigmask(SIG_SETMASK, &mc->mask, NULL);                              \
        }                                                                               \
    } while (0)

/* A fresh thread: its first call into the library happens here. */
static void *mask_thread(void *arg)
{
    struct mask_case *mc = arg;
    union report r;
    char buf[64];
    int i;
    pthread_sigmask(SIG_SETMASK, &mc->mask, NULL);
    AFTER(host.get_state(slots[0], &r.classic), "the thread's first CA_GetCurrentHAState");
    AFTER(host.get_state(slots[1 % nmembers], &r.classic), "a second CA_GetCurrentHAState");
    AFTER(host.get_state_legacy(slots[0], &r.classic), "CA_GetHAState");
    AFTER(get_state_sa6(slots[0], (CK_HA_STATE_PTR)(void *)&r), "CA_GetCurrentHAState_SA6");
    AFTER(get_state_legacy_sa6(slots[0], (CK_HA_STATE_PTR)(void *)&r), "CA_GetHAState_SA6");
    AFTER(host.get_state(slots[0], NULL), "CKR_ARGUMENTS_BAD");
    AFTER(host.get_state(0x7fff1234, &r.classic), "CKR_SLOT_ID_INVALID");
    AFTER(host.last_error(buf, sizeof buf), "CA_GetHAExtLastError");
    for (i = 0; i < 50; i++) {
        AFTER(host.get_state(slots[i % nmembers], &r.classic), "a later CA_GetCurrentHAState");
    }
    return NULL;
}

static void test_thread_masks(void)
{
    struct mask_case cases[4];
    int i;
    memset(cases, 0, sizeof cases);
    cases[0].name = "an empty mask";
    sigemptyset(&cases[0].mask);
    cases[1].name = "a host's usual mask (SIGINT, SIGTERM, SIGUSR1, SIGCHLD, SIGRTMIN+2 blocked)";
    sigemptyset(&cases[1].mask);
    sigaddset(&cases[1].mask, SIGINT);
    sigaddset(&cases[1].mask, SIGTERM);
    sigaddset(&cases[1].mask, SIGUSR1);
    sigaddset(&cases[1].mask, SIGCHLD);
    sigaddset(&cases[1].mask, SIGRTMIN + 2);
    cases[2].name = "every signal blocked (a sigwait host)";
    sigfillset(&cases[2].mask);
    cases[3].name = "the fault signals blocked (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGURG, SIGPROF)";
    sigemptyset(&cases[3].mask);
    sigaddset(&cases[3].mask, SIGSEGV);
    sigaddset(&cases[3].mask, SIGBUS);
    sigaddset(&cases[3].mask, SIGFPE);
    sigaddset(&cases[3].mask, SIGILL);
    sigaddset(&cases[3].mask, SIGURG);
    sigaddset(&cases[3].mask, SIGPROF);
    for (i = 0; i < 4; i++) {
        pthread_t t;
        sigset_t mine;
        /* What the thread really holds: glibc never blocks its own two
         * signals (32, 33), whatever the set asks. */
        pthread_sigmask(SIG_SETMASK, NULL, &mine);
        pthread_sigmask(SIG_SETMASK, &cases[i].mask, NULL);
        pthread_sigmask(SIG_SETMASK, &mine, &cases[i].mask);
        pthread_create(&t, NULL, mask_thread, &cases[i]);
        pthread_join(t, NULL);
        check(cases[i].bad == 0, "%s: unchanged by each of 57 calls of every export, the first included%s%s",
              cases[i].name, cases[i].bad ? "; " : "", cases[i].diff);
    }
}

/* The Go runtime's threads: threads of this process that are not the
 * host's. Each must block every signal outside the set the runtime always
 * unblocks (the faults, SIGSTKFLT, SIGCHLD, SIGURG, SIGPROF, 32-34). */
static void test_runtime_threads(pid_t host_tid)
{
    static const int go_unblocks[] = {SIGILL, SIGTRAP, SIGBUS, SIGFPE, SIGSEGV, SIGSTKFLT,
                                      SIGCHLD, SIGURG, SIGPROF, 32, 33, 34};
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    int threads = 0, bad = 0;
    char detail[256] = "";
    while (d && (e = readdir(d))) {
        char path[300], line[256];
        unsigned long long blk = 0;
        FILE *f;
        int s, k;
        if (e->d_name[0] == '.' || atoi(e->d_name) == host_tid) {
            continue;
        }
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        if (!(f = fopen(path, "r"))) {
            continue;
        }
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "SigBlk:", 7) == 0) {
                blk = strtoull(line + 7, NULL, 16);
            }
        }
        fclose(f);
        threads++;
        for (s = 1; s <= 64; s++) {
            int exempt = s == SIGKILL || s == SIGSTOP;
            for (k = 0; k < (int)(sizeof go_unblocks / sizeof go_unblocks[0]); k++) {
                exempt |= go_unblocks[k] == s;
            }
            if (!exempt && !(blk >> (s - 1) & 1)) {
                if (!bad++) {
                    snprintf(detail, sizeof detail, "; thread %.16s accepts signal %d (SigBlk %016llx)", e->d_name, s,
                             blk);
                }
                break;
            }
        }
    }
    if (d) {
        closedir(d);
    }
    check(threads > 0 && bad == 0,
          "each of the library's %d threads blocks every signal but those the Go runtime always takes%s", threads,
          detail);
}

/* ---- last error, per thread ------------------------------------------- */

static pthread_barrier_t step;

struct err_thread {
    int fail_first; /* 1: unknown slot; 2: NULL pState */
    char first[256], after_other[256], after_success[256];
    CK_ULONG len_after_success;
};

static void *err_main(void *arg)
{
    struct err_thread *t = arg;
    union report r;
    if (t->fail_first == 1) {
        host.get_state(0x7fff1234, &r.classic);
    } else {
        host.get_state(slots[0], NULL);
    }
    host.last_error(t->first, sizeof t->first);
    pthread_barrier_wait(&step); /* both failed once */
    pthread_barrier_wait(&step); /* the other thread succeeded */
    host.last_error(t->after_other, sizeof t->after_other);
    if (t->fail_first == 1) {
        host.get_state(slots[0], &r.classic);
        t->len_after_success = host.last_error(t->after_success, sizeof t->after_success);
    }
    return NULL;
}

static void test_last_error(void)
{
    struct err_thread a, b;
    pthread_t ta, tb;
    union report r;
    char buf[256], small[5];
    CK_ULONG n, full;

    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.fail_first = 1;
    b.fail_first = 2;
    pthread_barrier_init(&step, NULL, 3);
    pthread_create(&ta, NULL, err_main, &a);
    pthread_create(&tb, NULL, err_main, &b);
    pthread_barrier_wait(&step);
    /* Meanwhile this thread succeeds: it clears its own last error only. */
    check(host.get_state(slots[0], &r.classic) == CKR_OK && host.last_error(buf, sizeof buf) == 0 && buf[0] == 0,
          "a thread's successful call leaves its last error empty while other threads failed");
    pthread_barrier_wait(&step);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    pthread_barrier_destroy(&step);
    check(strstr(a.first, "slot") != NULL, "an unknown slot leaves a reason naming the slot (\"%s\")", a.first);
    check(strstr(b.first, "pState") != NULL, "a NULL pState leaves a reason naming pState (\"%s\")", b.first);
    check(strcmp(a.after_other, a.first) == 0 && strcmp(b.after_other, b.first) == 0,
          "each thread keeps its own reason whatever the others did");
    check(a.len_after_success == 0 && a.after_success[0] == 0,
          "a successful call clears the reason of the thread's earlier failure");

    host.get_state(0x7fff1234, &r.classic);
    full = host.last_error(NULL, 0);
    n = host.last_error(small, sizeof small);
    check(full > sizeof small && n == full && strlen(small) == sizeof small - 1 &&
              strncmp(small, "slot", 4) == 0,
          "CA_GetHAExtLastError returns the full length and truncates with a NUL (%lu, \"%s\")", full, small);
    check(host.last_error(buf, sizeof buf) == full, "reading the last error does not clear it");
    host.get_state(slots[0], &r.classic);
    check(host.last_error(NULL, 0) == 0, "the next successful call clears it");
}

/* ---- fork -------------------------------------------------------------- */

struct child_result {
    CK_RV rv_current, rv_legacy, rv_sa6, rv_null;
    double ms;
    char reason[512];
    int mask_same;
};

static void test_fork(void)
{
    union report r;
    struct child_result res;
    int fds[2], status = 0, answered;
    pid_t pid;
    double t0;
    struct pollfd pfd;

    check(host.get_state(slots[0], &r.classic) == CKR_OK, "the parent's engine is running before the fork");
    if (pipe(fds) != 0) {
        check(0, "pipe: %s", strerror(errno));
        return;
    }
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        sigset_t before, after;
        double c0;
        close(fds[0]);
        memset(&res, 0, sizeof res);
        pthread_sigmask(SIG_SETMASK, NULL, &before);
        c0 = now_ms();
        res.rv_current = host.get_state(slots[0], &r.classic);
        res.rv_legacy = host.get_state_legacy(slots[0], &r.classic);
        res.rv_sa6 = get_state_sa6(slots[0], (CK_HA_STATE_PTR)(void *)&r);
        res.rv_null = host.get_state(slots[0], NULL);
        res.ms = now_ms() - c0;
        host.last_error(res.reason, sizeof res.reason);
        pthread_sigmask(SIG_SETMASK, NULL, &after);
        res.mask_same = same_mask(&before, &after);
        if (write(fds[1], &res, sizeof res) != (ssize_t)sizeof res) {
            _exit(3);
        }
        _exit(0);
    }
    close(fds[1]);
    t0 = now_ms();
    pfd.fd = fds[0];
    pfd.events = POLLIN;
    answered = poll(&pfd, 1, 10000) == 1 && read(fds[0], &res, sizeof res) == (ssize_t)sizeof res;
    if (!answered) {
        kill(pid, SIGKILL);
    }
    waitpid(pid, &status, 0);
    close(fds[0]);
    check(answered, "the fork child's status calls return (%s after %.0f ms)", answered ? "answered" : "no answer",
          now_ms() - t0);
    if (!answered) {
        return;
    }
    check(res.rv_current == CKR_FUNCTION_FAILED && res.rv_legacy == CKR_FUNCTION_FAILED &&
              res.rv_sa6 == CKR_FUNCTION_FAILED && res.rv_null == CKR_FUNCTION_FAILED,
          "in the child every status call answers CKR_FUNCTION_FAILED (%s, %s, %s, %s)", status_name(res.rv_current),
          status_name(res.rv_legacy), status_name(res.rv_sa6), status_name(res.rv_null));
    check(res.ms < 100, "all four at once (%.2f ms)", res.ms);
    check(strstr(res.reason, "fork") != NULL, "CA_GetHAExtLastError gives the reason in the child (\"%.60s...\")",
          res.reason);
    check(res.mask_same, "the child's mask is unchanged too");
    check(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child exits normally");
    check(host.get_state(slots[0], &r.classic) == CKR_OK && host.last_error(NULL, 0) == 0,
          "the parent goes on working after the fork");
}

/* ---- fork while libhaext's call is inside the vendor ------------------- */

static void *status_caller(void *arg)
{
    union report r;
    *(CK_RV *)arg = host.get_state(slots[0], &r.classic);
    return NULL;
}

/* Forks; the child makes one vendor call (C_GetInfo) when call_vendor is
 * set, else exits at once. Returns how long fork() took in the parent, and
 * in *answered whether the child's call returned within 5 s (its CK_RV in
 * *child_rv). */
static double fork_child(int call_vendor, int *answered, CK_RV *child_rv)
{
    int fds[2], status = 0;
    double t0, took;
    struct pollfd pfd;
    pid_t pid;

    *answered = 0;
    if (pipe(fds) != 0) {
        check(0, "pipe: %s", strerror(errno));
        return -1;
    }
    fflush(stdout);
    t0 = now_ms();
    pid = fork();
    if (pid == 0) {
        CK_INFO info;
        CK_RV rv = CKR_OK;
        close(fds[0]);
        if (call_vendor) {
            rv = host.p11->C_GetInfo(&info);
        }
        _exit(write(fds[1], &rv, sizeof rv) == (ssize_t)sizeof rv ? 0 : 3);
    }
    took = now_ms() - t0;
    close(fds[1]);
    pfd.fd = fds[0];
    pfd.events = POLLIN;
    *answered = poll(&pfd, 1, 5000) == 1 && read(fds[0], child_rv, sizeof *child_rv) == (ssize_t)sizeof *child_rv;
    if (!*answered) {
        kill(pid, SIGKILL);
    }
    waitpid(pid, &status, 0);
    close(fds[0]);
    return took;
}

static void test_fork_in_call(void)
{
    void (*set_us)(long);
    void *sym = dlsym(host.vendor_handle, "delayshim_set_us");
    union report r;
    pthread_t t;
    CK_RV caller_rv = 0, child_rv = 0;
    int answered;
    double ms, ms2;

    memcpy(&set_us, &sym, sizeof sym);
    if (set_us == NULL) {
        check(0, "the vendor module is test/shim/delayshim.c (delayshim_set_us found)");
        return;
    }
    check(host.get_state(slots[0], &r.classic) == CKR_OK, "a status call with no delay: CKR_OK");

    /* Every member's C_GetSessionInfo takes 200 ms under the module's
     * mutex; the host forks 50 ms into the status call. */
    set_us(200000);
    pthread_create(&t, NULL, status_caller, &caller_rv);
    sleep_ms(50);
    ms = fork_child(1, &answered, &child_rv);
    check(answered, "fork during libhaext's vendor call: the child's own vendor call returns (%s)",
          answered ? status_name(child_rv) : "it hangs on a lock the call held");
    check(ms >= 100 && ms < 1500, "fork() waited for libhaext's calls in flight to return (%.0f ms)", ms);
    pthread_join(t, NULL);
    check(caller_rv == CKR_OK, "the status call meanwhile: %s", status_name(caller_rv));

    /* Now the call lasts 3 s: fork() waits for it until it is 500 ms old,
     * then no more, and the next fork() not at all. */
    set_us(3000000);
    pthread_create(&t, NULL, status_caller, &caller_rv);
    sleep_ms(50);
    ms = fork_child(0, &answered, &child_rv);
    ms2 = fork_child(0, &answered, &child_rv);
    check(ms >= 300 && ms < 1500, "a call that looks hung: fork() waits until it is 500 ms old, no longer (%.0f ms)",
          ms);
    check(ms2 < 200, "the next fork() does not wait for it again (%.1f ms)", ms2);
    set_us(0);
    pthread_join(t, NULL);
    check(caller_rv == CKR_OK, "the status call meanwhile: %s", status_name(caller_rv));
    /* The slow calls return; every member answers again (and no call of
     * libhaext's is inside the module when the process exits). */
    {
        double t0 = now_ms();
        int all_ok = 0;
        CK_ULONG i;
        while (!all_ok && now_ms() - t0 < 10000) {
            all_ok = host.get_state(slots[0], &r.classic) == CKR_OK && r.classic.listSize == (CK_ULONG)nmembers;
            for (i = 0; all_ok && i < r.classic.listSize; i++) {
                all_ok = r.classic.memberList[i].memberStatus == CKR_OK;
            }
            if (!all_ok) {
                sleep_ms(100);
            }
        }
        check(all_ok, "afterwards every member is CKR_OK again (%.0f ms)", now_ms() - t0);
    }
}

int main(int argc, char **argv)
{
    char *list = strdup(need_env("HALAB_SERIALS")), *tok, *save = NULL;
    sigset_t before, after;
    char diff[200];
    void *sym;
    int i;

    setvbuf(stdout, NULL, _IOLBF, 0);
    /* The loading thread's mask, a typical one, must survive the load. */
    sigemptyset(&before);
    sigaddset(&before, SIGUSR2);
    sigaddset(&before, SIGRTMIN + 5);
    pthread_sigmask(SIG_SETMASK, &before, NULL);
    pthread_sigmask(SIG_SETMASK, NULL, &before);
    host_load(&host, need_env("HALAB_MODULE"), need_env("LIBHAEXT"));
    pthread_sigmask(SIG_SETMASK, NULL, &after);
    mask_names(&before, &after, diff, sizeof diff);
    check(same_mask(&before, &after), "loading libhaext.so leaves the loading thread's mask alone%s", diff);

    sym = dlsym(host.ha_handle, "CA_GetCurrentHAState_SA6");
    memcpy(&get_state_sa6, &sym, sizeof sym);
    sym = dlsym(host.ha_handle, "CA_GetHAState_SA6");
    memcpy(&get_state_legacy_sa6, &sym, sizeof sym);
    if (!get_state_sa6 || !get_state_legacy_sa6 || !host.get_state_legacy) {
        fprintf(stderr, "libhaext.so lacks an entry point\n");
        return 2;
    }
    for (tok = strtok_r(list, " ", &save); tok && nmembers < MAX; tok = strtok_r(NULL, " ", &save)) {
        slots[nmembers] = slot_of_serial(&host, tok);
        if (slots[nmembers++] == (CK_SLOT_ID)-1) {
            fprintf(stderr, "member %s not found\n", tok);
            return 2;
        }
    }
    free(list);

    if (argc > 1 && strcmp(argv[1], "fork-in-call") == 0) {
        test_fork_in_call();
        return done();
    }
    test_thread_masks();
    /* This (the main) thread's first call, under its own mask. */
    {
        union report r;
        pthread_sigmask(SIG_SETMASK, NULL, &before);
        host.get_state(slots[0], &r.classic);
        pthread_sigmask(SIG_SETMASK, NULL, &after);
        mask_names(&before, &after, diff, sizeof diff);
        check(same_mask(&before, &after), "the main thread's first call leaves its mask alone%s", diff);
    }
    for (i = 0; i < 3; i++) {
        union report r;
        host.get_state(slots[i % nmembers], &r.classic);
    }
    test_runtime_threads(gettid());
    test_last_error();
    test_fork();
    return done();
}
