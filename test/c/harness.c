#define _GNU_SOURCE
#include "harness.h"

#include <dlfcn.h>
#include <pthread.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static int passed, failed;
static pthread_mutex_t report_mu = PTHREAD_MUTEX_INITIALIZER;

/* emit prints one reporter line, whole even when threads report at once;
 * ok is -1 for a note, else the result of a check. */
static void emit(int ok, const char *fmt, va_list ap)
{
    pthread_mutex_lock(&report_mu);
    if (ok < 0) {
        printf("# ");
    } else {
        ok ? passed++ : failed++;
        printf("%s %d - ", ok ? "ok" : "not ok", passed + failed);
    }
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    pthread_mutex_unlock(&report_mu);
}

void check(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(ok != 0, fmt, ap);
    va_end(ap);
}

void note(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(-1, fmt, ap);
    va_end(ap);
}

int done(void)
{
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed == 0 && passed > 0 ? 0 : 1;
}

double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static long status_field(const char *key)
{
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) {
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, n) == 0) {
            v = strtol(line + n, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

int thread_count(void) { return (int)status_field("Threads:"); }
long rss_kib(void) { return status_field("VmRSS:"); }

const char *need_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "harness: %s is not set (run through test/c/run.sh)\n", name);
        exit(2);
    }
    return v;
}

int lab_run(const char *action, int idx)
{
    char index[16];
    pid_t pid;
    int status;
    char *argv[] = {"bash", (char *)need_env("HALAB_LAB_SH"), (char *)action, "--dir",
                    (char *)need_env("HALAB_DIR"), index, NULL};
    snprintf(index, sizeof index, "%d", idx);
    if (posix_spawnp(&pid, "bash", NULL, NULL, argv, environ) != 0 || waitpid(pid, &status, 0) < 0 ||
        !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return -1;
    }
    return 0;
}

void host_load(struct host *h, const char *vendor_path, const char *libhaext_path)
{
    memset(h, 0, sizeof *h);
    if (vendor_path) {
        CK_C_GetFunctionList gfl;
        CK_C_INITIALIZE_ARGS args;
        CK_RV rv;
        h->vendor_handle = dlopen(vendor_path, RTLD_NOW | RTLD_LOCAL);
        if (!h->vendor_handle) {
            fprintf(stderr, "harness: dlopen %s: %s\n", vendor_path, dlerror());
            exit(2);
        }
        gfl = (CK_C_GetFunctionList)dlsym(h->vendor_handle, "C_GetFunctionList");
        if (!gfl || gfl(&h->p11) != CKR_OK) {
            fprintf(stderr, "harness: C_GetFunctionList of %s failed\n", vendor_path);
            exit(2);
        }
        memset(&args, 0, sizeof args);
        args.flags = CKF_OS_LOCKING_OK;
        rv = h->p11->C_Initialize(&args);
        if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
            fprintf(stderr, "harness: C_Initialize: 0x%lx\n", rv);
            exit(2);
        }
    }
    if (libhaext_path) {
        h->ha_handle = dlopen(libhaext_path, RTLD_NOW | RTLD_LOCAL);
        if (!h->ha_handle) {
            fprintf(stderr, "harness: dlopen %s: %s\n", libhaext_path, dlerror());
            exit(2);
        }
        h->get_state = (ha_state_fn)dlsym(h->ha_handle, "CA_GetCurrentHAState");
        h->get_state_legacy = (ha_state_fn)dlsym(h->ha_handle, "CA_GetHAState");
        h->last_error = (ha_error_fn)dlsym(h->ha_handle, "CA_GetHAExtLastError");
        if (!h->get_state || !h->last_error) {
            fprintf(stderr, "harness: %s lacks the CA_ entry points\n", libhaext_path);
            exit(2);
        }
    }
}

CK_ULONG parse_serial(const char *text)
{
    const char *p;
    int digits = 1;
    for (p = text; *p; p++) {
        if (*p < '0' || *p > '9') {
            digits = 0;
        }
    }
    return strtoul(text, NULL, digits ? 10 : 16);
}

static void trim_copy(char *dst, const unsigned char *src, size_t n)
{
    while (n > 0 && src[n - 1] == ' ') {
        n--;
    }
    memcpy(dst, src, n);
    dst[n] = 0;
}

CK_SLOT_ID slot_of_serial(struct host *h, const char *serial)
{
    CK_SLOT_ID slots[256];
    CK_ULONG n = 256, i;
    if (h->p11->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) {
        return (CK_SLOT_ID)-1;
    }
    for (i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        char s[17];
        if (h->p11->C_GetTokenInfo(slots[i], &ti) != CKR_OK) {
            continue;
        }
        trim_copy(s, ti.serialNumber, sizeof ti.serialNumber);
        if (strcasecmp(s, serial) == 0) {
            return slots[i];
        }
    }
    return (CK_SLOT_ID)-1;
}

long sessions_on_slot(struct host *h, CK_SLOT_ID slot, CK_SESSION_HANDLE upto)
{
    CK_SESSION_HANDLE s;
    long n = 0;
    for (s = 1; s <= upto; s++) {
        CK_SESSION_INFO si;
        if (h->p11->C_GetSessionInfo(s, &si) == CKR_OK && si.slotID == slot) {
            n++;
        }
    }
    return n;
}

CK_SESSION_HANDLE session_marker(struct host *h, CK_SLOT_ID slot)
{
    CK_SESSION_HANDLE s = 0;
    if (h->p11->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK) {
        return 0;
    }
    h->p11->C_CloseSession(s);
    return s;
}

int status_is_documented(CK_RV rv)
{
    switch (rv) {
    case CKR_OK:
    case CKR_HA_NO_INSTANCE:
    case CKR_HA_SOCKET_DOWN:
    case CKR_HA_TIMEOUT:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_REMOVED:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_GENERAL_ERROR:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
        return 1;
    }
    return 0;
}

const char *status_name(CK_RV rv)
{
    static __thread char buf[32];
    switch (rv) {
    case CKR_OK: return "CKR_OK";
    case CKR_HA_NO_INSTANCE: return "CKR_HA_NO_INSTANCE";
    case CKR_HA_SOCKET_DOWN: return "CKR_HA_SOCKET_DOWN";
    case CKR_HA_TIMEOUT: return "CKR_HA_TIMEOUT";
    case CKR_DEVICE_ERROR: return "CKR_DEVICE_ERROR";
    case CKR_SESSION_HANDLE_INVALID: return "CKR_SESSION_HANDLE_INVALID";
    case CKR_SESSION_CLOSED: return "CKR_SESSION_CLOSED";
    case CKR_GENERAL_ERROR: return "CKR_GENERAL_ERROR";
    case CKR_ARGUMENTS_BAD: return "CKR_ARGUMENTS_BAD";
    case CKR_SLOT_ID_INVALID: return "CKR_SLOT_ID_INVALID";
    case CKR_FUNCTION_FAILED: return "CKR_FUNCTION_FAILED";
    }
    snprintf(buf, sizeof buf, "0x%08lx", rv);
    return buf;
}

int lab_members(char text[][32], CK_ULONG *serials, int max)
{
    char *list = strdup(need_env("HALAB_SERIALS")), *tok, *save = NULL;
    int n = 0;
    for (tok = strtok_r(list, " ", &save); tok && n < max; tok = strtok_r(NULL, " ", &save)) {
        snprintf(text[n], 32, "%s", tok);
        serials[n++] = parse_serial(tok);
    }
    free(list);
    return n;
}

void lab_slots(struct host *h, char text[][32], int n, CK_SLOT_ID *slots)
{
    int i;
    for (i = 0; i < n; i++) {
        slots[i] = slot_of_serial(h, text[i]);
        if (slots[i] == (CK_SLOT_ID)-1) {
            fprintf(stderr, "member %s not found in the module\n", text[i]);
            exit(2);
        }
    }
}

void lab_do(const char *action, int idx)
{
    if (lab_run(action, idx) != 0) {
        note("lab.sh %s %d failed", action, idx);
    }
}

CK_RV timed_state(struct host *h, CK_SLOT_ID slot, CK_HA_STATUS *st, double *ms)
{
    double t0 = now_ms();
    CK_RV rv;
    memset(st, 0xA5, sizeof *st);
    rv = h->get_state(slot, st);
    if (ms) {
        *ms = now_ms() - t0;
    }
    return rv;
}
