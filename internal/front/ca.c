/*
 * ca.c - the CA_* calls of libhaext-pkcs11.so.
 *
 * The front is plain C. The status engine is Go, in libhaext.so, and the
 * front loads it only on the host's first CA_* call: a host that never asks
 * libhaext anything has no Go runtime in its process (no thread, no start-up
 * cost, nothing running when it forks or exits), and the front makes no
 * vendor call of its own. On that first call the front loads the vendor if
 * the host has not made it do so yet, loads libhaext.so (beside the front,
 * one directory up, then by its SONAME), and hands it struct haext_front
 * (hostapi.h, attach.c) with CA_HAExtAttachFront; every CA_* call then goes to
 * libhaext.so's own. A failed load is tried again on the next call.
 *
 * The last error: a call the front refuses itself keeps its reason here, per
 * thread; CA_GetHAExtLastError answers it, else libhaext.so's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdarg.h>
#include <string.h>

#include "ha.h"

#define ENGINE_SONAME "libhaext.so.1"

typedef CK_RV (*state_fn)(CK_SLOT_ID, void *);
/* cryptoki_ha.h's CK_HA_STATE_CALLBACK (the front does not include it). */
typedef void (*state_cb)(CK_SLOT_ID, const char *, CK_RV, CK_RV, void *);

static struct engine {
    state_fn current, legacy, current_sa6, legacy_sa6;
    CK_ULONG (*last_error)(char *, CK_ULONG);
    CK_RV (*set_list)(CK_FUNCTION_LIST_PTR);
    CK_RV (*set_callback)(CK_SLOT_ID, state_cb, CK_ULONG, void *); /* NULL: an older libhaext.so */
} engine;
static _Atomic int engine_loaded;
static pthread_mutex_t engine_mu = PTHREAD_MUTEX_INITIALIZER;
static char engine_why[1024]; /* why the last load failed; engine_mu */

/* The reason of the calling thread's last CA_* call that the front refused
 * itself, or NULL: a constant, or engine_why. Not initial-exec TLS: the
 * static TLS space left for libraries loaded later is small, and
 * libhaext.so (the Go runtime) needs its share of it. */
static __thread const char *refused;

static const char threads_reason[] =
    "the host initialized the module with CKF_LIBRARY_CANT_CREATE_OS_THREADS: libhaext starts no thread and "
    "makes no call of its own while that holds, so it cannot check the group (the front forwards the host's "
    "calls as before); initialize without that flag to use CA_GetCurrentHAState";

/* Opens libhaext.so: beside the front, one directory up (the front in
 * $libdir/pkcs11, libhaext.so.1 in $libdir), then by its SONAME. */
static void *open_engine(char *why, size_t whylen)
{
    Dl_info info;
    char dir[PATH_MAX], path[PATH_MAX + 32];
    const char *const rel[] = {"/" ENGINE_SONAME, "/../" ENGINE_SONAME};
    void *h;
    size_t i;
    if (dladdr((void *)open_engine, &info) != 0 && info.dli_fname != NULL && strchr(info.dli_fname, '/')) {
        snprintf(dir, sizeof dir, "%s", info.dli_fname);
        *strrchr(dir, '/') = '\0';
        for (i = 0; i < sizeof rel / sizeof rel[0]; i++) {
            snprintf(path, sizeof path, "%s%s", dir, rel[i]);
            if ((h = dlopen(path, RTLD_NOW | RTLD_LOCAL)) != NULL)
                return h;
        }
    }
    if ((h = dlopen(ENGINE_SONAME, RTLD_NOW | RTLD_LOCAL)) != NULL)
        return h;
    snprintf(why, whylen, "libhaext-pkcs11: cannot load libhaext's engine, %s, beside %s or by its name: %s",
             ENGINE_SONAME, info.dli_fname != NULL ? info.dli_fname : "the front", dlerror());
    return NULL;
}

static int load_locked(void)
{
    CK_RV (*attach)(const struct haext_front *);
    const struct haext_front *front = front_attach();
    void *h;
    CK_RV rv;
    if (front == NULL) {
        snprintf(engine_why, sizeof engine_why, "%s", front_vendor_error());
        return -1;
    }
    if ((h = open_engine(engine_why, sizeof engine_why)) == NULL)
        return -1;
    /* Never dlclosed: a Go runtime cannot be unloaded. */
    attach = (CK_RV(*)(const struct haext_front *))dlsym(h, "CA_HAExtAttachFront");
    engine.current = (state_fn)dlsym(h, "CA_GetCurrentHAState");
    engine.legacy = (state_fn)dlsym(h, "CA_GetHAState");
    engine.current_sa6 = (state_fn)dlsym(h, "CA_GetCurrentHAState_SA6");
    engine.legacy_sa6 = (state_fn)dlsym(h, "CA_GetHAState_SA6");
    engine.last_error = (CK_ULONG(*)(char *, CK_ULONG))dlsym(h, "CA_GetHAExtLastError");
    engine.set_list = (CK_RV(*)(CK_FUNCTION_LIST_PTR))dlsym(h, "CA_SetHAExtFunctionList");
    engine.set_callback = (CK_RV(*)(CK_SLOT_ID, state_cb, CK_ULONG, void *))dlsym(h, "CA_HAExtSetStateCallback");
    if (attach == NULL || engine.current == NULL || engine.legacy == NULL || engine.current_sa6 == NULL ||
        engine.legacy_sa6 == NULL || engine.last_error == NULL || engine.set_list == NULL) {
        snprintf(engine_why, sizeof engine_why,
                 "libhaext-pkcs11: %s lacks CA_HAExtAttachFront or a CA_* call: install libhaext.so and "
                 "libhaext-pkcs11.so of the same version", ENGINE_SONAME);
        return -1;
    }
    if ((rv = attach(front)) != CKR_OK) {
        char msg[sizeof engine_why - 64];
        engine.last_error(msg, sizeof msg);
        snprintf(engine_why, sizeof engine_why, "libhaext-pkcs11: CA_HAExtAttachFront: 0x%lx: %s", (unsigned long)rv,
                 msg);
        return -1;
    }
    atomic_store(&engine_loaded, 1);
    return 0;
}

/* 0 when libhaext.so is loaded and attached; else the calling thread's
 * refusal is set and the CK_RV to return is in *rv. */
static int ready(CK_RV *rv)
{
    int rc = 0;
    refused = NULL;
    front_haslot_why_clear();
    if (front_host_threads_forbidden()) {
        refused = threads_reason;
        *rv = CKR_FUNCTION_FAILED;
        return -1;
    }
    if (atomic_load(&engine_loaded))
        return 0;
    pthread_mutex_lock(&engine_mu);
    if (!atomic_load(&engine_loaded) && load_locked() != 0) {
        refused = engine_why;
        *rv = CKR_GENERAL_ERROR;
        rc = -1;
    }
    pthread_mutex_unlock(&engine_mu);
    return rc;
}

#define STATE_CALL(name, field) \
    CK_RV name(CK_SLOT_ID slotId, void *pState) \
    { \
        CK_RV rv; \
        if (ready(&rv) != 0) \
            return rv; \
        return engine.field(front_haslot_member_slot(slotId), pState); \
    }

STATE_CALL(CA_GetCurrentHAState, current)
STATE_CALL(CA_GetHAState, legacy)
STATE_CALL(CA_GetCurrentHAState_SA6, current_sa6)
STATE_CALL(CA_GetHAState_SA6, legacy_sa6)

CK_ULONG CA_GetHAExtLastError(char *buf, CK_ULONG size)
{
    const char *why = refused;
    size_t n;
    if (why == NULL)
        why = front_haslot_why(); /* a call the HA slot refused */
    if (why == NULL) {
        if (atomic_load(&engine_loaded))
            return engine.last_error(buf, size);
        why = "";
    }
    n = strlen(why);
    if (buf != NULL && size > 0) {
        size_t k = n < size - 1 ? n : (size_t)(size - 1);
        memcpy(buf, why, k);
        buf[k] = '\0';
    }
    return (CK_ULONG)n;
}

/* In front of the module the library uses the host's instance already: the
 * front's own lists and the vendor's are accepted as they are; another
 * module's list is refused. */
CK_RV CA_SetHAExtFunctionList(CK_FUNCTION_LIST_PTR pFunctionList)
{
    CK_RV rv;
    if (ready(&rv) != 0)
        return rv;
    if (pFunctionList == NULL)
        return engine.set_list(NULL); /* CKR_ARGUMENTS_BAD, with libhaext's reason */
    if (pFunctionList == &front_function_list || (void *)pFunctionList == (void *)&front_iface_list3 ||
        pFunctionList == atomic_load_explicit(&front_vendor_list, memory_order_acquire))
        return CKR_OK;
    refused = "in front of the module, libhaext already uses the host's own instance of the vendor module; "
              "CA_SetHAExtFunctionList takes only the front's or the vendor's function list";
    return CKR_ARGUMENTS_BAD;
}

/* Appends to buf (size bytes, *at used so far) what fmt says; the full
 * length is counted even past size. */
static void say(char *buf, CK_ULONG size, CK_ULONG *at, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void say(char *buf, CK_ULONG size, CK_ULONG *at, const char *fmt, ...)
{
    va_list ap;
    int n;
    va_start(ap, fmt);
    n = vsnprintf(buf != NULL && *at < size ? buf + *at : NULL, buf != NULL && *at < size ? size - *at : 0, fmt, ap);
    va_end(ap);
    if (n > 0)
        *at += (CK_ULONG)n;
}

CK_ULONG CA_HAExtGetHASlotReport(CK_SLOT_ID slotId, char *buf, CK_ULONG size)
{
    struct front_ha_slot *s = front_haslot_get(slotId);
    CK_ULONG at = 0;
    if (buf != NULL && size > 0)
        buf[0] = '\0';
    if (s == NULL)
        return 0;
    say(buf, size, &at, "slot %lu label %s serial %s sessions %ld failovers %lu drift %lu\n", (unsigned long)s->id,
        s->g->label, s->g->serial, s->sessions, (unsigned long)atomic_load(&front_ha_failovers),
        front_hanote_drift_count());
    for (int m = 0; m < s->nmembers; m++) {
        struct front_ha_member *x = &s->m[m];
        say(buf, size, &at, "member %s %s%s ops %lu lost %lu inflight %d\n", s->g->text[m],
            atomic_load(&x->up) ? "up" : "down", x->standby ? " standby" : "", (unsigned long)atomic_load(&x->ops),
            (unsigned long)atomic_load(&x->lost), atomic_load(&x->inflight));
    }
    for (unsigned i = 0; i < 32; i++) {
        const char *n = front_hanote_drift_note(i);
        if (n != NULL)
            say(buf, size, &at, "drift %s\n", n);
    }
    return at;
}

/* The state-change callbacks run on libhaext.so's dispatcher thread, with
 * every signal blocked; the front only forwards the registration. An
 * older libhaext.so without the call: the other CA_* calls still work. */
CK_RV CA_HAExtSetStateCallback(CK_SLOT_ID slotId, state_cb fn, CK_ULONG intervalMs, void *ctx)
{
    CK_RV rv;
    if (ready(&rv) != 0)
        return rv;
    if (engine.set_callback == NULL) {
        refused = "libhaext-pkcs11: " ENGINE_SONAME " lacks CA_HAExtSetStateCallback: install libhaext.so and "
                  "libhaext-pkcs11.so of the same version";
        return CKR_FUNCTION_NOT_SUPPORTED;
    }
    return engine.set_callback(front_haslot_member_slot(slotId), fn, intervalMs, ctx);
}
