/*
 * ckr.h - the CK_RV classes in C: the twin of pkg/cryptoki/rv.go, where
 * they are defined. internal/front's tests check every function here
 * against its Go original for every CK_RV miekg/pkcs11 names (and more), so
 * the two cannot drift: change both.
 *
 *   haext_rv_connection   cryptoki.ConnectionLost: the member behind the
 *                         slot may be gone
 *   haext_rv_dropped      cryptoki.SessionDropped: the module no longer has
 *                         the session
 *   haext_rv_failover     cryptoki.FailOver: either; on a session of one's
 *                         own, the member is lost (the HA slot moves on)
 */
#ifndef HAEXT_CKR_H
#define HAEXT_CKR_H

#include <p11-kit/pkcs11.h>

static inline int haext_rv_connection(CK_RV rv)
{
    return rv == CKR_DEVICE_ERROR || rv == CKR_DEVICE_REMOVED || rv == CKR_TOKEN_NOT_PRESENT;
}

static inline int haext_rv_dropped(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED;
}

static inline int haext_rv_failover(CK_RV rv)
{
    return haext_rv_connection(rv) || haext_rv_dropped(rv);
}

#endif
