/*
 * list.c - a PKCS#11 function list whose entries call the scripted Go fake
 * (fake.go). Only what libhaext calls is implemented; every other entry
 * answers CKR_FUNCTION_NOT_SUPPORTED.
 */
#include <string.h>

#include "_cgo_export.h"

static CK_RV fk_initialize(CK_VOID_PTR args) { (void)args; return fakeInitialize(); }
static CK_RV fk_finalize(CK_VOID_PTR reserved) { (void)reserved; return fakeFinalize(); }

static CK_RV fk_get_info(CK_INFO_PTR info)
{
    memset(info, 0, sizeof *info);
    return fakeGetInfo();
}

static CK_RV fk_get_slot_list(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
    (void)present;
    return fakeSlotList(list, count);
}

static CK_RV fk_get_token_info(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
    memset(info, ' ', sizeof *info);
    return fakeTokenInfo(slot, (char *)info->serialNumber, sizeof info->serialNumber,
                         (char *)info->label, sizeof info->label);
}

static CK_RV fk_open_session(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                             CK_SESSION_HANDLE_PTR session)
{
    (void)flags;
    (void)app;
    (void)notify;
    return fakeOpenSession(slot, session);
}

static CK_RV fk_close_session(CK_SESSION_HANDLE session) { return fakeCloseSession(session); }

static CK_RV fk_get_session_info(CK_SESSION_HANDLE session, CK_SESSION_INFO_PTR info)
{
    memset(info, 0, sizeof *info);
    return fakeSessionInfo(session);
}

static CK_FUNCTION_LIST fk_list;

CK_FUNCTION_LIST_PTR fake_list(void)
{
    CK_RV (**slot)(void) = (CK_RV (**)(void))&fk_list.C_Initialize;
    CK_RV (**end)(void) = (CK_RV (**)(void))(&fk_list.C_WaitForSlotEvent + 1);
    extern CK_RV fake_unsupported(void);
    for (; slot < end; slot++) {
        *slot = fake_unsupported;
    }
    fk_list.version.major = 2;
    fk_list.version.minor = 40;
    fk_list.C_Initialize = fk_initialize;
    fk_list.C_Finalize = fk_finalize;
    fk_list.C_GetInfo = fk_get_info;
    fk_list.C_GetSlotList = fk_get_slot_list;
    fk_list.C_GetTokenInfo = fk_get_token_info;
    fk_list.C_OpenSession = fk_open_session;
    fk_list.C_CloseSession = fk_close_session;
    fk_list.C_GetSessionInfo = fk_get_session_info;
    return &fk_list;
}

CK_RV fake_unsupported(void) { return CKR_FUNCTION_NOT_SUPPORTED; }
