/*
 * watchshim.c - a PKCS#11 module that watches the sessions of another: it
 * forwards every call to the real module and, for every call that takes a
 * session handle, counts the calls on that handle in flight. A call that
 * starts while another call on the same handle is still inside the module
 * is an overlap. PKCS#11 leaves concurrent calls on one session to the
 * application: a host that never shares a session between threads has 0,
 * and so must a front module that lends the host's sessions to libhaext
 * (test/consumers/lend_host.c puts this module between the front and the
 * vendor: Chrystoki2/LibHAExtVendor).
 *
 * A host marks its own threads with watchshim_mark_host(); a call on a
 * session a marked thread opened, made by a thread that is not marked, is
 * a foreign call: libhaext's call on a lent host session. The counters are
 * read with watchshim_stats() (the host dlopens this module by the same
 * path, RTLD_NOLOAD, and gets the instance the front loaded).
 *
 * Environment (read at the first C_GetFunctionList):
 *   WATCHSHIM_MODULE  the real module (default: SoftHSM2's libsofthsm2.so,
 *                     looked for where test/lab/lab.sh looks)
 *
 * Build: make build/watchshim.so
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <glob.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

#define WS_EXPORT __attribute__((visibility("default")))

/* One watched handle. Entries are never removed: a handle the module
 * reuses keeps its entry (its in-flight count is back to 0 by then). */
#define WS_TABLE 65536 /* power of two */
struct ws_entry {
    _Atomic CK_SESSION_HANDLE h; /* 0: free (CK_INVALID_HANDLE is never a session) */
    atomic_int inflight;
    atomic_int host_opened;         /* opened by a thread marked as the host's */
    const char *_Atomic last_name;  /* the function of the latest call on it */
};

static struct ws_entry table[WS_TABLE];

/* The counters watchshim_stats reports. */
static atomic_ulong n_calls, n_overlaps, n_foreign, n_untracked;
/* The first overlap seen: the entering call and the one it found inside. */
static const char *_Atomic first_enter, *_Atomic first_inside;
static _Atomic CK_SESSION_HANDLE first_handle;

static __thread int is_host;

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST wrapped;
static CK_RV load_rv = CKR_GENERAL_ERROR;
static pthread_once_t load_once = PTHREAD_ONCE_INIT;

/* The counters, for the host: calls on sessions, overlaps, foreign calls
 * (on a host thread's session from a thread that is not the host's), and
 * calls on handles the table had no room for. */
struct watchshim_stats {
    unsigned long calls, overlaps, foreign, untracked;
    char first_overlap[128]; /* "C_X entered during C_Y on 0xH", or "" */
};

WS_EXPORT void watchshim_mark_host(void)
{
    is_host = 1;
}

WS_EXPORT void watchshim_stats(struct watchshim_stats *st)
{
    const char *e = atomic_load(&first_enter), *i = atomic_load(&first_inside);
    st->calls = atomic_load(&n_calls);
    st->overlaps = atomic_load(&n_overlaps);
    st->foreign = atomic_load(&n_foreign);
    st->untracked = atomic_load(&n_untracked);
    st->first_overlap[0] = 0;
    if (e != NULL)
        snprintf(st->first_overlap, sizeof st->first_overlap, "%s entered during %s on 0x%lx", e,
                 i != NULL ? i : "?", (unsigned long)atomic_load(&first_handle));
}

WS_EXPORT void watchshim_reset(void)
{
    atomic_store(&n_calls, 0);
    atomic_store(&n_overlaps, 0);
    atomic_store(&n_foreign, 0);
    atomic_store(&n_untracked, 0);
    atomic_store(&first_enter, NULL);
}

/* The entry of h, created when missing; NULL when the table is full. */
static struct ws_entry *entry(CK_SESSION_HANDLE h)
{
    unsigned long long x = (unsigned long long)h * 0x9E3779B97F4A7C15ULL;
    unsigned i = (unsigned)(x >> 48) & (WS_TABLE - 1), k;
    for (k = 0; k < WS_TABLE; k++, i = (i + 1) & (WS_TABLE - 1)) {
        CK_SESSION_HANDLE cur = atomic_load(&table[i].h);
        if (cur == h)
            return &table[i];
        if (cur == CK_INVALID_HANDLE) {
            CK_SESSION_HANDLE want = CK_INVALID_HANDLE;
            if (atomic_compare_exchange_strong(&table[i].h, &want, h) || want == h)
                return &table[i];
        }
    }
    return NULL;
}

static struct ws_entry *enter(CK_SESSION_HANDLE h, const char *name)
{
    struct ws_entry *e;
    atomic_fetch_add(&n_calls, 1);
    if (h == CK_INVALID_HANDLE)
        return NULL;
    if ((e = entry(h)) == NULL) {
        atomic_fetch_add(&n_untracked, 1);
        return NULL;
    }
    if (atomic_fetch_add(&e->inflight, 1) > 0) {
        const char *none = NULL;
        atomic_fetch_add(&n_overlaps, 1);
        if (atomic_compare_exchange_strong(&first_enter, &none, name)) {
            atomic_store(&first_inside, atomic_load(&e->last_name));
            atomic_store(&first_handle, h);
        }
    }
    atomic_store(&e->last_name, name);
    if (!is_host && atomic_load(&e->host_opened))
        atomic_fetch_add(&n_foreign, 1);
    return e;
}

static void leave(struct ws_entry *e)
{
    if (e != NULL)
        atomic_fetch_sub(&e->inflight, 1);
}

/* Watched: the functions whose first argument is a session (shim.h). The
 * others are forwarded as they are (C_OpenSession below). */
#define WS_SESSION_FUNCTIONS(X) SHIM_SESSION_FUNCTIONS(X)
#define WS_OTHER_FUNCTIONS(X) \
    X(C_Initialize, (CK_VOID_PTR args), (args)) \
    X(C_Finalize, (CK_VOID_PTR reserved), (reserved)) \
    SHIM_GLOBAL_FUNCTIONS(X) SHIM_SLOT_FUNCTIONS(X)

#define WS_SESSION_WRAPPER(name, params, args)                                                             \
    static CK_RV ws_##name params                                                                          \
    {                                                                                                      \
        struct ws_entry *e_ = enter(s, #name);                                                             \
        CK_RV rv_ = real->name args;                                                                       \
        leave(e_);                                                                                         \
        return rv_;                                                                                        \
    }
WS_SESSION_FUNCTIONS(WS_SESSION_WRAPPER)

#define WS_OTHER_WRAPPER(name, params, args)                                                               \
    static CK_RV ws_##name params                                                                          \
    {                                                                                                      \
        return real->name args;                                                                            \
    }
WS_OTHER_FUNCTIONS(WS_OTHER_WRAPPER)

/* A session opened by a host thread: the host's. */
static CK_RV ws_C_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                              CK_SESSION_HANDLE_PTR s)
{
    CK_RV rv = real->C_OpenSession(slot, flags, app, notify, s);
    if (rv == CKR_OK && s != NULL && *s != CK_INVALID_HANDLE) {
        struct ws_entry *e = entry(*s);
        if (e != NULL)
            atomic_store(&e->host_opened, is_host);
    }
    return rv;
}

static void ws_load(void)
{
    if ((real = shim_load_real("watchshim", "WATCHSHIM_MODULE")) == NULL)
        return;
    memset(&wrapped, 0, sizeof wrapped);
    wrapped.version = real->version;
    wrapped.C_GetFunctionList = C_GetFunctionList;
    wrapped.C_OpenSession = ws_C_OpenSession;
#define WS_ASSIGN(name, params, args) wrapped.name = ws_##name;
    WS_SESSION_FUNCTIONS(WS_ASSIGN)
    WS_OTHER_FUNCTIONS(WS_ASSIGN)
#undef WS_ASSIGN
    load_rv = CKR_OK;
}

WS_EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    if (list == NULL)
        return CKR_ARGUMENTS_BAD;
    pthread_once(&load_once, ws_load);
    if (load_rv != CKR_OK)
        return load_rv;
    *list = &wrapped;
    return CKR_OK;
}
