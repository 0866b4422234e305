/*
 * session.c - the host's calls that open, close or log in sessions, or
 * initialize a token: C_OpenSession, C_CloseSession, C_CloseAllSessions,
 * C_Login (and 3.0's C_LoginUser, iface.c), C_InitToken; and what a failed
 * call on a session tells (front_session_failed, from the trampolines).
 * Each is forwarded on the host's thread; the front's tables follow it.
 */
#include "state.h"

/* Host session e (handle h) is gone: take it out of the table, record it
 * (record: as a host error with rv) and, when it was the host's last
 * session on its slot, close the front's own session there. */
static void host_gone(struct front_sess *e, CK_SESSION_HANDLE h, int record, CK_RV rv)
{
    int last = 0;
    struct front_slot *s = front_table_take(e, h, &last);
    if (s == NULL)
        return;
    if (record)
        front_events_push(HAEXT_EV_HOST_ERROR, s->id, rv);
    if (last)
        front_own_close(s, 0);
}

void front_session_failed(CK_SESSION_HANDLE h, CK_RV rv)
{
    struct front_sess *e;
    if (haext_rv_connection(rv)) {
        CK_SLOT_ID slot = HAEXT_SLOT_NONE;
        front_table_lock();
        if ((e = front_table_find(h)) != NULL)
            slot = e->slot->id;
        front_table_unlock();
        front_events_push(HAEXT_EV_HOST_ERROR, slot, rv);
    } else if (haext_rv_dropped(rv)) {
        front_table_lock();
        e = front_table_find(h);
        front_table_unlock();
        if (e != NULL && !atomic_load(&e->closing))
            host_gone(e, h, 1, rv);
    }
}

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify,
                    CK_SESSION_HANDLE_PTR phSession)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (FRONT_UNLIKELY(front_haslot_get(slotID) != NULL)) {
        FRONT_HA_GUARDED(rv, front_haslot_open(slotID, flags, phSession));
        return rv;
    }
    rv = v->C_OpenSession(slotID, flags, pApplication, Notify, phSession);
    if (rv == CKR_OK && phSession != NULL)
        front_table_add(slotID, *phSession);
    else if (haext_rv_connection(rv))
        front_events_push(HAEXT_EV_HOST_ERROR, slotID, rv);
    return rv;
}

CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    struct front_sess *e;
    CK_SLOT_ID slot = HAEXT_SLOT_NONE;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (FRONT_UNLIKELY(FRONT_HA_TAGGED(hSession)) && front_haslot_session(hSession) != NULL) {
        FRONT_HA_GUARDED(rv, front_haslot_close(hSession));
        return rv;
    }
    front_table_lock();
    e = front_table_find(hSession);
    if (e != NULL) {
        atomic_store(&e->closing, 1); /* lend it no more */
        slot = e->slot->id;
    }
    front_table_unlock();
    if (e != NULL)
        front_loans_wait_returned(e, NULL); /* never close a session under libhaext's call */

    rv = v->C_CloseSession(hSession);

    if (e != NULL) {
        if (rv == CKR_OK || haext_rv_dropped(rv))
            host_gone(e, hSession, haext_rv_dropped(rv), rv);
        else
            atomic_store(&e->closing, 0);
    }
    if (haext_rv_connection(rv))
        front_events_push(HAEXT_EV_HOST_ERROR, slot, rv);
    return rv;
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    struct front_slot *s;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (front_haslot_get(slotID) != NULL) {
        FRONT_HA_GUARDED(rv, front_haslot_close_all(slotID));
        return rv;
    }
    front_table_lock();
    s = front_table_slot(slotID, 0);
    if (s != NULL)
        front_table_mark_closing(s, 1);
    front_table_unlock();
    if (s != NULL) {
        /* The module closes the front's own session too: let every
         * session on the slot come back first, open no new one. */
        front_own_stop(s);
        front_loans_wait_returned(NULL, s);
    }

    rv = v->C_CloseAllSessions(slotID);

    if (s != NULL) {
        front_table_lock();
        if (rv == CKR_OK)
            front_table_clear_slot(s);
        else
            front_table_mark_closing(s, 0);
        front_table_unlock();
        front_own_resume(s, rv == CKR_OK);
    }
    if (haext_rv_connection(rv))
        front_events_push(HAEXT_EV_HOST_ERROR, slotID, rv);
    return rv;
}

/* C_Login, or 3.0's C_LoginUser when login_user is the vendor's. */
static CK_RV login(CK_C_LoginUser login_user, CK_SESSION_HANDLE h, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
                   CK_ULONG len, CK_UTF8CHAR_PTR name, CK_ULONG name_len)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    struct front_slot *s = NULL;
    struct front_sess *e;
    CK_SESSION_HANDLE prev;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (FRONT_HA_TAGGED(h) && front_haslot_session(h) != NULL)
    {
        if (name != NULL)
            return front_haslot_refuse(CKR_FUNCTION_NOT_SUPPORTED, "C_LoginUser with a user name");
        FRONT_HA_GUARDED(rv, front_ha_C_Login(h, user, pin, len));
        return rv;
    }
    if (user == CKU_SO) {
        /* A read-only session of the front's would make it fail with
         * CKR_SESSION_READ_ONLY_EXISTS: close it first. */
        front_table_lock();
        e = front_table_find(h);
        if (e != NULL)
            s = e->slot;
        front_table_unlock();
        if (s != NULL)
            front_own_close(s, 1);
    }
    prev = front_busy_begin(h);
    rv = login_user != NULL ? login_user(h, user, pin, len, name, name_len) : v->C_Login(h, user, pin, len);
    front_busy_end(prev);
    if (s != NULL)
        front_own_resume(s, 0);
    if (rv != CKR_OK)
        front_session_failed(h, rv);
    return rv;
}

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
    return login(NULL, hSession, userType, pPin, ulPinLen, NULL, 0);
}

CK_RV front_session_login_user(CK_C_LoginUser login_user, CK_SESSION_HANDLE h, CK_USER_TYPE user,
                               CK_UTF8CHAR_PTR pin, CK_ULONG len, CK_UTF8CHAR_PTR name, CK_ULONG name_len)
{
    return login(login_user, h, user, pin, len, name, name_len);
}

CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
    CK_FUNCTION_LIST_PTR v = atomic_load_explicit(&front_vendor_list, memory_order_acquire);
    struct front_slot *s;
    CK_RV rv;
    if (v == NULL)
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (front_haslot_get(slotID) != NULL)
        return front_haslot_refuse(CKR_FUNCTION_NOT_SUPPORTED,
                                   "C_InitToken: token administration goes to each member's own slot");
    /* C_InitToken fails with CKR_SESSION_EXISTS while any session is open,
     * the front's own included. */
    front_table_lock();
    s = front_table_slot(slotID, 0);
    front_table_unlock();
    if (s != NULL)
        front_own_close(s, 1);
    rv = v->C_InitToken(slotID, pPin, ulPinLen, pLabel);
    if (s != NULL)
        front_own_resume(s, 0);
    if (haext_rv_connection(rv))
        front_events_push(HAEXT_EV_HOST_ERROR, slotID, rv);
    return rv;
}
