/*
 * null_vendor.c - a PKCS#11 module that answers every call at once with
 * CKR_OK (one token "m00" in slot 1, session handle 1), for front_bench: the
 * front's own cost, without a real vendor's work around it.
 */
#include <string.h>

#include <p11-kit/pkcs11.h>

static CK_RV ok(void)
{
    return CKR_OK;
}

static CK_RV slot_list(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR n)
{
    (void)present;
    if (list != NULL)
        list[0] = 1;
    *n = 1;
    return CKR_OK;
}

static CK_RV token_info(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
    (void)slot;
    memset(info, ' ', sizeof *info);
    memcpy(info->label, "m00", 3);
    return CKR_OK;
}

static CK_RV open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR h)
{
    (void)slot, (void)flags, (void)app, (void)notify;
    *h = 1;
    return CKR_OK;
}

static CK_FUNCTION_LIST list;

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp)
{
    /* Every entry returns CKR_OK without looking at its arguments; the
     * casts go through a generic function pointer type. */
    void (**f)(void) = (void (**)(void)) & list.C_Initialize;
    unsigned i;
    for (i = 0; i < (sizeof list - sizeof list.version) / sizeof *f; i++)
        f[i] = (void (*)(void))ok;
    list.version.major = 2;
    list.version.minor = 40;
    list.C_GetFunctionList = C_GetFunctionList;
    list.C_GetSlotList = slot_list;
    list.C_GetTokenInfo = token_info;
    list.C_OpenSession = open_session;
    *pp = &list;
    return CKR_OK;
}
