/*
 * bare_module.c - a reference for the front module's forwarding cost: the
 * least a PKCS#11 module in front of a vendor can do.
 *
 * It loads the vendor named by $BARE_VENDOR (RTLD_DEEPBIND, as the front
 * does) and hands out a copy of the vendor's list in which C_Initialize,
 * C_GetSessionInfo and C_Sign are its own: plain C trampolines through its
 * copy of the vendor's list that only count the calls that failed. Looking
 * at the vendor's result is the least a module in front can do (the front
 * must, to see the host's errors), and it means a call frame of its own:
 * the vendor returns to the module, not to the host. C_Initialize adds
 * CKF_OS_LOCKING_OK to a NULL argument, as the front does, so that the
 * vendor locks the same way behind both.
 *
 * Built twice by test/bench/run.sh: as is (a few kB), and with
 * -DBARE_PAD_MB=N, which puts N MB of data between its code and its data,
 * as a module that carries a Go runtime has (libhaext-pkcs11.so's C code
 * and the data it reads lie 1.2 to 1.9 MB apart, the Go runtime's
 * read-only data between them). The two show what a call costs for that
 * distance alone.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>

#include <p11-kit/pkcs11.h>

#define EXPORT __attribute__((visibility("default")))

#ifdef BARE_PAD_MB
/* Initialized, so that it lies in .data, between .text and .bss. */
EXPORT char bare_module_pad[BARE_PAD_MB << 20] = {1};
#endif

static CK_FUNCTION_LIST vendor, list;
static unsigned long failed;

static CK_RV bare_initialize(CK_VOID_PTR args)
{
    CK_C_INITIALIZE_ARGS locking = {.flags = CKF_OS_LOCKING_OK};
    return vendor.C_Initialize(args != NULL ? args : &locking);
}

static CK_RV bare_get_session_info(CK_SESSION_HANDLE h, CK_SESSION_INFO_PTR info)
{
    CK_RV rv = vendor.C_GetSessionInfo(h, info);
    if (rv != CKR_OK)
        __atomic_fetch_add(&failed, 1, __ATOMIC_RELAXED);
    return rv;
}

static CK_RV bare_sign(CK_SESSION_HANDLE h, CK_BYTE_PTR data, CK_ULONG n, CK_BYTE_PTR sig, CK_ULONG_PTR sig_len)
{
    CK_RV rv = vendor.C_Sign(h, data, n, sig, sig_len);
    if (rv != CKR_OK)
        __atomic_fetch_add(&failed, 1, __ATOMIC_RELAXED);
    return rv;
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
    const char *path = getenv("BARE_VENDOR");
    void *h;
    CK_C_GetFunctionList get;
    CK_FUNCTION_LIST_PTR v;
    if (out == NULL)
        return CKR_ARGUMENTS_BAD;
    if (list.C_GetFunctionList == NULL) {
        if (path == NULL || (h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND)) == NULL ||
            (get = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList")) == NULL || get(&v) != CKR_OK)
            return CKR_GENERAL_ERROR;
        vendor = *v;
        list = *v;
        list.C_Initialize = bare_initialize;
        list.C_GetSessionInfo = bare_get_session_info;
        list.C_Sign = bare_sign;
        list.C_GetFunctionList = C_GetFunctionList;
    }
    *out = &list;
    return CKR_OK;
}
