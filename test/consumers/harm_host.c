/*
 * harm_host.c - hosts for the do-no-harm checks of test/consumers/harm.sh:
 * one that exits without C_Finalize, as Java and short command-line tools
 * do (run thousands of times), one that forbids the library threads, one
 * that asks libhaext alone.
 *
 *   harm_host MODULE init [US]
 *       dlopen MODULE, C_GetFunctionList, C_Initialize(NULL), US
 *       microseconds of the host's own work (default 0), exit(0).
 *   harm_host MODULE reinit SLOT
 *       C_Initialize, CA_GetCurrentHAState(SLOT) (MODULE is the front),
 *       C_Finalize, C_Initialize, CA_GetCurrentHAState(SLOT) again (prints
 *       both: "before=RV statuses=..." and "after=..."), C_Finalize,
 *       C_Initialize, exit(0).
 *   harm_host MODULE ca-exit SLOT MS [CA_LIBRARY]
 *       C_Initialize, then a thread calls CA_GetCurrentHAState(SLOT) of
 *       CA_LIBRARY (default: MODULE, the front) in a loop while the main
 *       thread calls exit(0) MS milliseconds later: libhaext's calls are
 *       inside the vendor when exit() begins.
 *   harm_host MODULE nothreads SLOT
 *       C_Initialize with CKF_LIBRARY_CANT_CREATE_OS_THREADS (and
 *       CKF_OS_LOCKING_OK), then CA_GetCurrentHAState(SLOT) of MODULE (the
 *       front; a vendor alone has none, ca=0x54): prints
 *       "init=RV ca=RV threads=BEFORE->AFTER reason=...".
 *   harm_host MODULE fork-storm SLOT THREADS FORKS TIMEOUT_MS
 *       C_Initialize; THREADS host threads call C_GetSessionInfo and
 *       C_GenerateRandom on sessions of their own on SLOT without pause
 *       while the main thread forks FORKS times; each child initializes
 *       the module again, opens a session and asks for its info. A child
 *       not done after TIMEOUT_MS is killed: prints "forks=N ok=N hung=N
 *       failed=N". With HARM_CA_LIBRARY set, a thread also calls its
 *       CA_GetCurrentHAState(SLOT) without pause.
 *   harm_host MODULE slots SLOT
 *       C_Initialize, C_GetSlotList (the count, then the list), then
 *       CA_GetCurrentHAState(SLOT) of MODULE (the front): prints
 *       "ca=RV statuses=...".
 *   harm_host LIBRARY ca-once SLOT
 *       CA_GetCurrentHAState(SLOT) of LIBRARY (libhaext.so or the front),
 *       nothing else: prints "ca=RV reason=...".
 *   harm_host MODULE startup N [MODULE2...]
 *       N times, for each module in turn: fork; the child loads it,
 *       C_GetFunctionList, C_Initialize(NULL), C_Finalize, _exit. Prints
 *       each module's median and mean wall time of a child, in
 *       microseconds (make bench).
 *
 * Exit status: 0, or 2 when a call fails; a crash at exit shows as the
 * signal that ended the process.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cryptoki_ha.h"

typedef CK_RV (*ca_state_fn)(CK_SLOT_ID, CK_HA_STATE_PTR);

static CK_FUNCTION_LIST_PTR load(const char *path)
{
    CK_C_GetFunctionList gfl;
    CK_FUNCTION_LIST_PTR list = NULL;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        fprintf(stderr, "harm_host: dlopen %s: %s\n", path, dlerror());
        exit(2);
    }
    gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
    if (gfl == NULL || gfl(&list) != CKR_OK || list == NULL) {
        fprintf(stderr, "harm_host: C_GetFunctionList of %s failed\n", path);
        exit(2);
    }
    return list;
}

static void must(const char *what, CK_RV rv)
{
    if (rv != CKR_OK) {
        fprintf(stderr, "harm_host: %s: 0x%lx\n", what, (unsigned long)rv);
        exit(2);
    }
}

/* lib's CA_GetCurrentHAState; NULL when it has none and optional. */
static ca_state_fn ca_state_opt(const char *lib, int optional)
{
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    ca_state_fn f = h != NULL ? (ca_state_fn)dlsym(h, "CA_GetCurrentHAState") : NULL;
    if (f == NULL && !optional) {
        fprintf(stderr, "harm_host: no CA_GetCurrentHAState in %s\n", lib);
        exit(2);
    }
    return f;
}

static ca_state_fn ca_state(const char *lib)
{
    return ca_state_opt(lib, 0);
}

/* "rv=0x.. statuses=0x..,0x.." of one status call. */
static void print_state(const char *what, CK_RV rv, const CK_HA_STATUS *st)
{
    CK_ULONG i;
    printf("%s=0x%lx statuses=", what, (unsigned long)rv);
    for (i = 0; rv == CKR_OK && i < st->listSize && i < CK_HA_MAX_MEMBERS; i++) {
        printf("%s0x%lx", i ? "," : "", (unsigned long)st->memberList[i].memberStatus);
    }
    printf("\n");
}

struct loop {
    ca_state_fn f;
    CK_SLOT_ID slot;
    _Atomic unsigned long calls;
    _Atomic CK_RV last;
};

static void *ca_loop(void *arg)
{
    struct loop *l = arg;
    CK_HA_STATUS st;
    for (;;) {
        l->last = l->f(l->slot, &st);
        l->calls++;
    }
    return NULL;
}

typedef CK_ULONG (*ca_error_fn)(char *, CK_ULONG);

/* Prints rv and this thread's last error of lib's CA_GetHAExtLastError. */
static void print_reason(const char *lib)
{
    char why[1024] = "";
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    ca_error_fn f = h != NULL ? (ca_error_fn)dlsym(h, "CA_GetHAExtLastError") : NULL;
    if (f != NULL) {
        f(why, sizeof why);
    }
    printf(" reason=%s\n", why);
}

/* The calling process's thread count. */
static int threads(void)
{
    char line[256];
    int n = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "Threads:", 8) == 0) {
            n = atoi(line + 8);
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    return n;
}

/* fork-storm: host threads in calls on their own sessions while the main
 * thread forks; each child initializes the module again and uses it. */
static CK_FUNCTION_LIST_PTR storm_list;
static CK_SLOT_ID storm_slot;

static void *storm(void *arg)
{
    CK_SESSION_HANDLE s;
    CK_SESSION_INFO si;
    CK_BYTE rnd[16];
    (void)arg;
    if (storm_list->C_OpenSession(storm_slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK) {
        return NULL;
    }
    for (;;) {
        storm_list->C_GetSessionInfo(s, &si);
        storm_list->C_GenerateRandom(s, rnd, sizeof rnd);
    }
    return NULL;
}

/* The child: the module again, one session, one call; 0 when it all works. */
static int storm_child(CK_FUNCTION_LIST_PTR l, CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE s;
    CK_SESSION_INFO si;
    CK_RV rv = l->C_Initialize(NULL);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        return 3;
    }
    if (l->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK || l->C_GetSessionInfo(s, &si) != CKR_OK) {
        return 4;
    }
    return 0;
}

static int fork_storm(CK_FUNCTION_LIST_PTR l, CK_SLOT_ID slot, int nthreads, int nforks, int timeout_ms)
{
    int i, hung = 0, failed = 0, ok = 0;
    storm_list = l;
    storm_slot = slot;
    for (i = 0; i < nthreads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, storm, NULL) != 0) {
            return 2;
        }
    }
    if (getenv("HARM_CA_LIBRARY") != NULL) {
        /* CA_GetCurrentHAState meanwhile, in the same process */
        static struct loop lp;
        pthread_t t;
        lp.f = ca_state(getenv("HARM_CA_LIBRARY"));
        lp.slot = slot;
        if (pthread_create(&t, NULL, ca_loop, &lp) != 0) {
            return 2;
        }
    }
    usleep(100000);
    for (i = 0; i < nforks; i++) {
        int status = 0, waited = 0;
        pid_t pid = fork();
        if (pid == 0) {
            _exit(storm_child(l, slot));
        }
        if (pid < 0) {
            return 2;
        }
        while (waitpid(pid, &status, WNOHANG) == 0) {
            if (waited >= timeout_ms) {
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                status = -1;
                break;
            }
            usleep(10000);
            waited += 10;
        }
        if (status == -1) {
            hung++;
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            ok++;
        } else {
            failed++;
        }
        usleep(20000);
    }
    printf("forks=%d ok=%d hung=%d failed=%d\n", nforks, ok, hung, failed);
    fflush(stdout);
    _exit(0);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* One child: load module, C_GetFunctionList, C_Initialize, C_Finalize,
 * _exit; its wall time in microseconds, or -1. */
static int64_t start_once(const char *module)
{
    int64_t t0 = now_us();
    int status;
    pid_t pid = fork();
    if (pid == 0) {
        CK_FUNCTION_LIST_PTR l = load(module);
        if (l->C_Initialize(NULL) != CKR_OK || l->C_Finalize(NULL) != CKR_OK) {
            _exit(2);
        }
        _exit(0);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return -1;
    }
    return now_us() - t0;
}

/* n children of each module, alternating, so that both see the same
 * machine; prints each one's median and mean. */
static int startup(char **modules, int nmod, int n)
{
    int64_t *t = calloc((size_t)(n * nmod), sizeof *t);
    int i, m;
    if (t == NULL || n < 1) {
        return 2;
    }
    for (i = 0; i < n; i++) {
        for (m = 0; m < nmod; m++) {
            if ((t[m * n + i] = start_once(modules[m])) < 0) {
                fprintf(stderr, "harm_host: startup child of %s failed\n", modules[m]);
                return 2;
            }
        }
    }
    for (m = 0; m < nmod; m++) {
        int64_t sum = 0;
        for (i = 0; i < n; i++) {
            sum += t[m * n + i];
        }
        qsort(t + m * n, (size_t)n, sizeof *t, cmp64);
        printf("module=%s median_us=%lld mean_us=%lld n=%d\n", modules[m], (long long)t[m * n + n / 2],
               (long long)(sum / n), n);
    }
    free(t);
    return 0;
}

int main(int argc, char **argv)
{
    CK_FUNCTION_LIST_PTR l;
    CK_HA_STATUS st;
    const char *mode;

    if (argc < 3) {
        fprintf(stderr, "usage: harm_host MODULE init [US]|reinit SLOT|ca-exit SLOT MS [CA_LIBRARY]|startup N [MODULE2...]\n");
        return 2;
    }
    mode = argv[2];
    if (strcmp(mode, "startup") == 0 && argc >= 4) {
        int n = atoi(argv[3]);
        argv[3] = argv[1]; /* the modules: MODULE and those after N */
        return startup(argv + 3, argc - 3, n);
    }
    if (strcmp(mode, "ca-once") == 0 && argc == 4) {
        CK_RV rv = ca_state(argv[1])(strtoul(argv[3], NULL, 10), &st);
        printf("ca=0x%lx", (unsigned long)rv);
        print_reason(argv[1]);
        return 0;
    }
    l = load(argv[1]);
    if (strcmp(mode, "nothreads") == 0 && argc == 4) {
        CK_C_INITIALIZE_ARGS args;
        CK_RV init, ca;
        int before, after;
        memset(&args, 0, sizeof args);
        args.flags = CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK;
        ca_state_fn f = ca_state_opt(argv[1], 1);
        init = l->C_Initialize(&args);
        before = threads();
        ca = f != NULL ? f(strtoul(argv[3], NULL, 10), &st) : CKR_FUNCTION_NOT_SUPPORTED;
        usleep(200000); /* threads the call started in the background */
        after = threads();
        printf("init=0x%lx ca=0x%lx threads=%d->%d", (unsigned long)init, (unsigned long)ca, before, after);
        print_reason(argv[1]);
        return 0;
    }
    {
        /* A host with threads of its own asks for locking: SoftHSM2 skips
         * its locks for C_Initialize(NULL), and crashes under threads. */
        CK_C_INITIALIZE_ARGS locking;
        int threaded = strcmp(mode, "fork-storm") == 0 || strcmp(mode, "ca-exit") == 0;
        memset(&locking, 0, sizeof locking);
        locking.flags = CKF_OS_LOCKING_OK;
        must("C_Initialize", l->C_Initialize(threaded ? &locking : NULL));
    }
    if (strcmp(mode, "slots") == 0 && argc == 4) {
        CK_SLOT_ID ids[64];
        CK_ULONG n = 64;
        CK_RV rv;
        must("C_GetSlotList", l->C_GetSlotList(CK_FALSE, NULL, &n));
        n = 64;
        must("C_GetSlotList", l->C_GetSlotList(CK_FALSE, ids, &n));
        rv = ca_state(argv[1])(strtoul(argv[3], NULL, 10), &st);
        print_state("ca", rv, &st);
        return 0;
    }
    if (strcmp(mode, "fork-storm") == 0 && argc == 7) {
        return fork_storm(l, strtoul(argv[3], NULL, 10), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
    }
    if (strcmp(mode, "init") == 0) {
        if (argc > 3) {
            usleep((useconds_t)atoi(argv[3])); /* the host's own work before it exits */
        }
        exit(0);
    }
    if (strcmp(mode, "reinit") == 0 && argc == 4) {
        ca_state_fn ca = ca_state(argv[1]);
        CK_SLOT_ID slot = strtoul(argv[3], NULL, 10);
        print_state("before", ca(slot, &st), &st);
        must("C_Finalize", l->C_Finalize(NULL));
        must("C_Initialize again", l->C_Initialize(NULL));
        print_state("after", ca(slot, &st), &st);
        fflush(stdout);
        must("C_Finalize", l->C_Finalize(NULL));
        must("C_Initialize again", l->C_Initialize(NULL));
        exit(0); /* right after the host's C_Initialize: nothing of libhaext's may be in the vendor */
    }
    if (strcmp(mode, "ca-exit") == 0 && argc >= 5) {
        static struct loop lp;
        pthread_t t;
        lp.f = ca_state(argc > 5 ? argv[5] : argv[1]);
        lp.slot = strtoul(argv[3], NULL, 10);
        if (pthread_create(&t, NULL, ca_loop, &lp) != 0) {
            return 2;
        }
        usleep((useconds_t)atoi(argv[4]) * 1000);
        fprintf(stderr, "ca: calls=%lu last=0x%lx\n", (unsigned long)lp.calls, (unsigned long)lp.last);
        exit(0);
    }
    fprintf(stderr, "harm_host: bad arguments\n");
    return 2;
}
