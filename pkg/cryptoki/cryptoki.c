/*
 * cryptoki.c - the vendor calls pkg/cryptoki makes from Go: each one inside
 * the fork fence (fence.c), through the host's gate, with the SIGPIPE guard
 * of call.h.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "cryptoki.h"

static _Atomic unsigned long drained_total;

unsigned long hx_sigpipes_drained(void)
{
    return drained_total;
}

#define HX_CALL(host, expr)                                  \
    do {                                                     \
        struct hx_sigpipe g_;                                \
        if (!hx_enter(host)) {                               \
            return CKR_CRYPTOKI_NOT_INITIALIZED;             \
        }                                                    \
        hx_sigpipe_block(&g_);                               \
        rv = (expr);                                         \
        drained_total += (unsigned long)hx_sigpipe_restore(&g_); \
        hx_leave(host);                                      \
    } while (0)

CK_RV hx_load(const char *path, void **handle, CK_FUNCTION_LIST_PTR *list, int *per_caller, const char **why)
{
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST_PTR again = NULL;
    CK_RV rv;
    struct hx_sigpipe g;

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
     * module's destructors run (fence.c). */
    hx_fence_setup();
    *list = NULL;
    if (!hx_fence_enter()) {
        *why = "the process is exiting";
        return CKR_GENERAL_ERROR;
    }
    hx_sigpipe_block(&g);
    rv = get(list);
    /* A module that hands every caller its own function list gives every
     * caller its own instance (p11-kit-proxy does). */
    if (rv == CKR_OK && *list != NULL && get(&again) == CKR_OK) {
        *per_caller = again != *list;
    }
    drained_total += (unsigned long)hx_sigpipe_restore(&g);
    hx_fence_leave();
    if (rv == CKR_OK && *list == NULL) {
        *why = "C_GetFunctionList returned CKR_OK and no function list";
        return CKR_GENERAL_ERROR;
    }
    /* The module stays loaded for the life of the process: never dlclose
     * a module the host may share. */
    return rv;
}

CK_RV hx_get_info(struct haext_host *h, CK_INFO *info)
{
    CK_RV rv;
    HX_CALL(h, h->list->C_GetInfo(info));
    return rv;
}

CK_RV hx_initialize(struct haext_host *h)
{
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;
    memset(&args, 0, sizeof args);
    args.flags = CKF_OS_LOCKING_OK;
    HX_CALL(h, h->list->C_Initialize(&args));
    return rv;
}

CK_RV hx_finalize(struct haext_host *h)
{
    CK_RV rv;
    HX_CALL(h, h->list->C_Finalize(NULL));
    return rv;
}

CK_RV hx_slot_list(struct haext_host *h, CK_SLOT_ID *slots, CK_ULONG *count)
{
    CK_RV rv;
    /* In front of the module, the host's own answer, where it made one:
     * no call of libhaext's to every member. */
    if (h->host_slots != NULL && (rv = h->host_slots(slots, count)) != CKR_FUNCTION_FAILED) {
        return rv;
    }
    HX_CALL(h, h->list->C_GetSlotList(CK_FALSE, slots, count));
    return rv;
}

CK_RV hx_token_info(struct haext_host *h, CK_SLOT_ID slot, CK_TOKEN_INFO *info)
{
    CK_RV rv;
    HX_CALL(h, h->list->C_GetTokenInfo(slot, info));
    return rv;
}

CK_RV hx_open_session(struct haext_host *h, CK_SLOT_ID slot, CK_SESSION_HANDLE *session)
{
    CK_RV rv;
    HX_CALL(h, h->list->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, session));
    return rv;
}

CK_RV hx_close_session(struct haext_host *h, CK_SESSION_HANDLE session)
{
    CK_RV rv;
    HX_CALL(h, h->list->C_CloseSession(session));
    return rv;
}

CK_RV hx_session_info(struct haext_host *h, CK_SESSION_HANDLE session)
{
    CK_SESSION_INFO info;
    CK_RV rv;
    HX_CALL(h, h->list->C_GetSessionInfo(session, &info));
    return rv;
}
