/*
 * delayshim.c - a PKCS#11 module that adds a fixed latency to every call of
 * another module: it forwards each call to the real module after sleeping
 * DELAYSHIM_US microseconds (nanosleep). Loaded as the provider of a
 * `p11-kit server`, it puts the delay on the server side, once per round
 * trip, as the network and an HSM would.
 *
 * Environment (read at the first C_GetFunctionList):
 *   DELAYSHIM_MODULE  the real module (default: SoftHSM2's libsofthsm2.so,
 *                     looked for where test/lab/lab.sh looks)
 *   DELAYSHIM_US      the delay per call in microseconds (default 0)
 *   DELAYSHIM_ONLY    delay only the function of that name (e.g.
 *                     C_GetSessionInfo); default: every delayed function
 *   DELAYSHIM_LOCK    1: every call, delay included, runs holding one
 *                     module-wide mutex, as vendors that serialize their
 *                     calls do (a fork child then inherits it held when a
 *                     thread was inside a call at fork time)
 *   DELAYSHIM_EXIT_REPORT  a file: when exit() runs the handler the
 *                     module registered with atexit when it was loaded
 *                     (where a C++ vendor's static destructors stand), it
 *                     appends "inflight=N" there: how many calls were
 *                     inside the module at that moment, which a vendor's
 *                     destructors would pull the ground from under
 *
 * C_GetFunctionList, C_Initialize and C_Finalize are not delayed; all the
 * other PKCS#11 2.x functions are. delayshim_set_us(us), exported, changes
 * the delay while the module runs (tests find it with dlsym).
 *
 * Build: cc -std=c99 -Wall -Wextra -Werror -O2 -fPIC -shared \
 *          $(pkg-config --cflags p11-kit-1) -o build/delayshim.so \
 *          test/shim/delayshim.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <glob.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

#define DS_EXPORT __attribute__((visibility("default")))

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST wrapped;
static _Atomic long delay_us;
static _Atomic int inflight;
static char only[64];
static int locked;
static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_RV load_rv = CKR_GENERAL_ERROR;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

DS_EXPORT void delayshim_set_us(long us)
{
    delay_us = us > 0 ? us : 0;
}

static void ds_delay(const char *name)
{
    long us = delay_us;
    struct timespec left;
    if (us == 0 || (only[0] != 0 && strcmp(name, only) != 0)) {
        return;
    }
    left.tv_sec = us / 1000000L;
    left.tv_nsec = (us % 1000000L) * 1000L;
    while (nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

static void ds_lock(void)
{
    if (locked) {
        pthread_mutex_lock(&call_mu);
    }
}

static void ds_unlock(void)
{
    if (locked) {
        pthread_mutex_unlock(&call_mu);
    }
}

/* Every delayed function: name, parameters, arguments (shim.h). */
#define DS_FUNCTIONS(X) SHIM_GLOBAL_FUNCTIONS(X) SHIM_SLOT_FUNCTIONS(X) SHIM_OPEN_SESSION(X) SHIM_SESSION_FUNCTIONS(X)

#define DS_WRAPPER(name, params, args)                                                                     \
    static CK_RV ds_##name params                                                                          \
    {                                                                                                      \
        CK_RV rv_;                                                                                         \
        inflight++;                                                                                        \
        ds_lock();                                                                                         \
        ds_delay(#name);                                                                                   \
        rv_ = real->name args;                                                                             \
        ds_unlock();                                                                                       \
        inflight--;                                                                                        \
        return rv_;                                                                                        \
    }
DS_FUNCTIONS(DS_WRAPPER)

/* Not delayed: loading and unloading are not round trips to the HSM. */
static CK_RV ds_C_Initialize(CK_VOID_PTR args)
{
    CK_RV rv;
    ds_lock();
    rv = real->C_Initialize(args);
    ds_unlock();
    return rv;
}

static CK_RV ds_C_Finalize(CK_VOID_PTR reserved)
{
    CK_RV rv;
    ds_lock();
    rv = real->C_Finalize(reserved);
    ds_unlock();
    return rv;
}

/* Registered with atexit when the module is loaded, as a C++ vendor's
 * static destructors are. */
static void ds_exit_report(void)
{
    const char *path = getenv("DELAYSHIM_EXIT_REPORT");
    FILE *f;
    if (path == NULL || *path == 0 || (f = fopen(path, "a")) == NULL) {
        return;
    }
    fprintf(f, "inflight=%d\n", (int)inflight);
    fclose(f);
}

static void ds_load(void)
{
    const char *us_text = getenv("DELAYSHIM_US");
    const char *only_text = getenv("DELAYSHIM_ONLY");
    const char *lock_text = getenv("DELAYSHIM_LOCK");
    long us = 0;

    if (us_text && *us_text) {
        char *end;
        us = strtol(us_text, &end, 10);
        if (*end != 0 || us < 0) {
            fprintf(stderr, "delayshim: bad DELAYSHIM_US '%s'\n", us_text);
            return;
        }
    }
    delay_us = us;
    if (only_text && *only_text) {
        if (strlen(only_text) >= sizeof only) {
            fprintf(stderr, "delayshim: DELAYSHIM_ONLY '%s' is too long\n", only_text);
            return;
        }
        snprintf(only, sizeof only, "%s", only_text);
    }
    locked = lock_text != NULL && strcmp(lock_text, "1") == 0;

    if ((real = shim_load_real("delayshim", "DELAYSHIM_MODULE")) == NULL) {
        return;
    }
    memset(&wrapped, 0, sizeof wrapped);
    wrapped.version = real->version;
    wrapped.C_Initialize = ds_C_Initialize;
    wrapped.C_Finalize = ds_C_Finalize;
    wrapped.C_GetFunctionList = C_GetFunctionList;
#define DS_ASSIGN(name, params, args) wrapped.name = ds_##name;
    DS_FUNCTIONS(DS_ASSIGN)
#undef DS_ASSIGN
    atexit(ds_exit_report);
    load_rv = CKR_OK;
}

DS_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (!list) {
        return CKR_ARGUMENTS_BAD;
    }
    pthread_once(&load_once, ds_load);
    if (load_rv != CKR_OK) {
        return load_rv;
    }
    *list = &wrapped;
    return CKR_OK;
}
