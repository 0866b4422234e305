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

#include <p11-kit/pkcs11.h>

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

/* Functions whose first argument is a session: name, parameters, arguments. */
#define WS_SESSION_FUNCTIONS(X)                                                                            \
    X(C_InitPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len), (s, pin, pin_len))          \
    X(C_SetPIN,                                                                                            \
      (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len, CK_UTF8CHAR_PTR new_pin,            \
       CK_ULONG new_len),                                                                                  \
      (s, old_pin, old_len, new_pin, new_len))                                                             \
    X(C_CloseSession, (CK_SESSION_HANDLE s), (s))                                                          \
    X(C_GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR info), (s, info))                        \
    X(C_GetOperationState, (CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG_PTR state_len),               \
      (s, state, state_len))                                                                               \
    X(C_SetOperationState,                                                                                 \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR state, CK_ULONG state_len, CK_OBJECT_HANDLE enc_key,               \
       CK_OBJECT_HANDLE auth_key),                                                                         \
      (s, state, state_len, enc_key, auth_key))                                                            \
    X(C_Login, (CK_SESSION_HANDLE s, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len),            \
      (s, user, pin, pin_len))                                                                             \
    X(C_Logout, (CK_SESSION_HANDLE s), (s))                                                                \
    X(C_CreateObject, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o),       \
      (s, t, n, o))                                                                                        \
    X(C_CopyObject,                                                                                        \
      (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR no),  \
      (s, o, t, n, no))                                                                                    \
    X(C_DestroyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o), (s, o))                                  \
    X(C_GetObjectSize, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ULONG_PTR size), (s, o, size))         \
    X(C_GetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n),      \
      (s, o, t, n))                                                                                        \
    X(C_SetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n),      \
      (s, o, t, n))                                                                                        \
    X(C_FindObjectsInit, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n))                 \
    X(C_FindObjects, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG max, CK_ULONG_PTR n),          \
      (s, o, max, n))                                                                                      \
    X(C_FindObjectsFinal, (CK_SESSION_HANDLE s), (s))                                                      \
    X(C_EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))             \
    X(C_Encrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol), \
      (s, in, in_len, out, ol))                                                                            \
    X(C_EncryptUpdate,                                                                                     \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_EncryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR ol), (s, out, ol))               \
    X(C_DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))             \
    X(C_Decrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol), \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DecryptUpdate,                                                                                     \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DecryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR ol), (s, out, ol))               \
    X(C_DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))                                     \
    X(C_Digest, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),  \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len), (s, in, in_len))             \
    X(C_DigestKey, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k), (s, k))                                      \
    X(C_DigestFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR ol), (s, out, ol))                \
    X(C_SignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))                \
    X(C_Sign, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),    \
      (s, in, in_len, out, ol))                                                                            \
    X(C_SignUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len), (s, in, in_len))               \
    X(C_SignFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG_PTR ol), (s, out, ol))                  \
    X(C_SignRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))         \
    X(C_SignRecover,                                                                                       \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_VerifyInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))              \
    X(C_Verify, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig, CK_ULONG sig_len), \
      (s, in, in_len, sig, sig_len))                                                                       \
    X(C_VerifyUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len), (s, in, in_len))             \
    X(C_VerifyFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sig_len), (s, sig, sig_len))          \
    X(C_VerifyRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))       \
    X(C_VerifyRecover,                                                                                     \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR sig, CK_ULONG sig_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),          \
      (s, sig, sig_len, out, ol))                                                                          \
    X(C_DigestEncryptUpdate,                                                                               \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DecryptDigestUpdate,                                                                               \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_SignEncryptUpdate,                                                                                 \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_DecryptVerifyUpdate,                                                                               \
      (CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out, CK_ULONG_PTR ol),            \
      (s, in, in_len, out, ol))                                                                            \
    X(C_GenerateKey,                                                                                       \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),   \
      (s, m, t, n, k))                                                                                     \
    X(C_GenerateKeyPair,                                                                                   \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn, CK_ATTRIBUTE_PTR vt,     \
       CK_ULONG vn, CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv),                                  \
      (s, m, pt, pn, vt, vn, pub, priv))                                                                   \
    X(C_WrapKey,                                                                                           \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k, CK_BYTE_PTR out,  \
       CK_ULONG_PTR ol),                                                                                   \
      (s, m, wk, k, out, ol))                                                                              \
    X(C_UnwrapKey,                                                                                         \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk, CK_BYTE_PTR in, CK_ULONG in_len,      \
       CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR k),                                            \
      (s, m, uk, in, in_len, t, n, k))                                                                     \
    X(C_DeriveKey,                                                                                         \
      (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE base, CK_ATTRIBUTE_PTR t, CK_ULONG n,     \
       CK_OBJECT_HANDLE_PTR k),                                                                            \
      (s, m, base, t, n, k))                                                                               \
    X(C_SeedRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR seed, CK_ULONG len), (s, seed, len))                 \
    X(C_GenerateRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG len), (s, out, len))               \
    X(C_GetFunctionStatus, (CK_SESSION_HANDLE s), (s))                                                     \
    X(C_CancelFunction, (CK_SESSION_HANDLE s), (s))

/* The others: forwarded as they are (C_OpenSession below). */
#define WS_OTHER_FUNCTIONS(X)                                                                              \
    X(C_Initialize, (CK_VOID_PTR args), (args))                                                            \
    X(C_Finalize, (CK_VOID_PTR reserved), (reserved))                                                      \
    X(C_GetInfo, (CK_INFO_PTR info), (info))                                                               \
    X(C_GetSlotList, (CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count), (present, list, count))  \
    X(C_GetSlotInfo, (CK_SLOT_ID slot, CK_SLOT_INFO_PTR info), (slot, info))                               \
    X(C_GetTokenInfo, (CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info), (slot, info))                             \
    X(C_GetMechanismList, (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count),               \
      (slot, list, count))                                                                                 \
    X(C_GetMechanismInfo, (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info),           \
      (slot, type, info))                                                                                  \
    X(C_InitToken, (CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label),        \
      (slot, pin, pin_len, label))                                                                         \
    X(C_CloseAllSessions, (CK_SLOT_ID slot), (slot))                                                       \
    X(C_WaitForSlotEvent, (CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved), (flags, slot, reserved))

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

/* The SoftHSM2 module, searched as test/lab/lab.sh searches it. */
static int default_module(char *out, size_t size)
{
    static const char *const patterns[] = {
        "/usr/lib/*-linux-gnu*/softhsm/libsofthsm2.so", "/usr/lib/*/softhsm/libsofthsm2.so",
        "/usr/lib64/softhsm/libsofthsm2.so",           "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    };
    size_t i;
    for (i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        glob_t g;
        int found = 0;
        if (glob(patterns[i], 0, NULL, &g) == 0 && g.gl_pathc > 0 && access(g.gl_pathv[0], R_OK) == 0) {
            snprintf(out, size, "%s", g.gl_pathv[0]);
            found = 1;
        }
        globfree(&g);
        if (found)
            return 0;
    }
    return -1;
}

static void ws_load(void)
{
    char path[4096];
    const char *env = getenv("WATCHSHIM_MODULE");
    CK_C_GetFunctionList gfl;
    void *handle;

    if (env != NULL && *env != 0) {
        snprintf(path, sizeof path, "%s", env);
    } else if (default_module(path, sizeof path) != 0) {
        fprintf(stderr, "watchshim: WATCHSHIM_MODULE unset and libsofthsm2.so not found\n");
        return;
    }
    handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        fprintf(stderr, "watchshim: dlopen %s: %s\n", path, dlerror());
        return;
    }
    gfl = (CK_C_GetFunctionList)dlsym(handle, "C_GetFunctionList");
    if (gfl == NULL || gfl(&real) != CKR_OK || real == NULL) {
        fprintf(stderr, "watchshim: C_GetFunctionList of %s failed\n", path);
        real = NULL;
        return;
    }
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
