/*
 * cryptoki.c - the vendor calls pkg/cryptoki makes from Go, each one as
 * call.h says for a Go thread: inside the fork fence, through the host's
 * gate, under the SIGPIPE guard (hx_call_begin .. hx_call_end).
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "cryptoki.h"

static _Atomic unsigned long sigpipes_taken;

unsigned long cryptoki_sigpipes_taken(void)
{
    return sigpipes_taken;
}

/* rv = expr, one vendor call through v; CKR_CRYPTOKI_NOT_INITIALIZED when
 * the fence or the gate is closed. */
#define CALL(v, expr)                                               \
    do {                                                            \
        struct hx_guard g_;                                         \
        if (!hx_call_begin(v, &g_)) {                               \
            return CKR_CRYPTOKI_NOT_INITIALIZED;                    \
        }                                                           \
        rv = (expr);                                                \
        sigpipes_taken += (unsigned long)hx_call_end(v, &g_);       \
    } while (0)

/* The module's C_GetFunctionList, asked twice: a module that hands every
 * caller its own function list gives every caller its own instance
 * (p11-kit-proxy does). Inside the fence, under the guard; no gate yet. */
static CK_RV get_list(CK_C_GetFunctionList get, CK_FUNCTION_LIST_PTR *list, int *per_caller, const char **why)
{
    static const struct haext_vendor nobody; /* no gate */
    CK_FUNCTION_LIST_PTR again = NULL;
    struct hx_guard g;
    CK_RV rv;
    *list = NULL;
    if (!hx_call_begin(&nobody, &g)) {
        *why = "the process is exiting";
        return CKR_GENERAL_ERROR;
    }
    rv = get(list);
    if (rv == CKR_OK && *list != NULL && get(&again) == CKR_OK) {
        *per_caller = again != *list;
    }
    sigpipes_taken += (unsigned long)hx_call_end(&nobody, &g);
    if (rv == CKR_OK && *list == NULL) {
        *why = "C_GetFunctionList returned CKR_OK and no function list";
        return CKR_GENERAL_ERROR;
    }
    return rv;
}

CK_RV cryptoki_load(const char *path, void **handle, CK_FUNCTION_LIST_PTR *list, int *per_caller, const char **why)
{
    CK_C_GetFunctionList get;

    *why = NULL;
    dlerror();
    *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (*handle == NULL) {
        const char *e = dlerror();
        *why = e ? e : "unknown dlopen error";
        return CKR_GENERAL_ERROR;
    }
    get = (CK_C_GetFunctionList)dlsym(*handle, "C_GetFunctionList");
    if (get == NULL) {
        *why = "no C_GetFunctionList in the module";
        return CKR_GENERAL_ERROR;
    }
    /* Loaded: from now on exit() waits for libhaext's calls before the
     * module's destructors run (call.c). */
    hx_fence_setup();
    /* The module stays loaded for the life of the process: never dlclose
     * a module the host may share. */
    return get_list(get, list, per_caller, why);
}

CK_RV cryptoki_get_info(struct haext_vendor *v, CK_INFO *info)
{
    CK_RV rv;
    CALL(v, v->list->C_GetInfo(info));
    return rv;
}

CK_RV cryptoki_initialize(struct haext_vendor *v)
{
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    CALL(v, v->list->C_Initialize(&args));
    return rv;
}

CK_RV cryptoki_finalize(struct haext_vendor *v)
{
    CK_RV rv;
    CALL(v, v->list->C_Finalize(NULL));
    return rv;
}

CK_RV cryptoki_slot_list(struct haext_vendor *v, CK_SLOT_ID *slots, CK_ULONG *count)
{
    CK_RV rv;
    /* In front of the module, the host's own answer, where it made one:
     * no call of libhaext's to every member. */
    if (v->host_slots != NULL && (rv = v->host_slots(slots, count)) != CKR_FUNCTION_FAILED) {
        return rv;
    }
    CALL(v, v->list->C_GetSlotList(CK_FALSE, slots, count));
    return rv;
}

CK_RV cryptoki_token_info(struct haext_vendor *v, CK_SLOT_ID slot, CK_TOKEN_INFO *info)
{
    CK_RV rv;
    CALL(v, v->list->C_GetTokenInfo(slot, info));
    return rv;
}

CK_RV cryptoki_open_session(struct haext_vendor *v, CK_SLOT_ID slot, CK_SESSION_HANDLE *session)
{
    CK_RV rv;
    CALL(v, v->list->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, session));
    return rv;
}

CK_RV cryptoki_close_session(struct haext_vendor *v, CK_SESSION_HANDLE session)
{
    CK_RV rv;
    CALL(v, v->list->C_CloseSession(session));
    return rv;
}

CK_RV cryptoki_session_info(struct haext_vendor *v, CK_SESSION_HANDLE session)
{
    CK_SESSION_INFO info;
    CK_RV rv;
    CALL(v, v->list->C_GetSessionInfo(session, &info));
    return rv;
}
