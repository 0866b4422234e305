/*
 * cryptoki_ha.h - libhaext: near real-time state of PKCS#11 HA groups.
 *
 * CA_GetCurrentHAState checks every member of the HA group a slot names, in
 * parallel and without opening or closing a session, and reports each
 * member's status. The structures have the layout of the Luna PKCS#11
 * extensions, so an application built against Luna's cryptoki_v2.h works
 * unchanged; include this header after Luna's and it steps aside.
 *
 * CK_ULONG, CK_RV and CK_SLOT_ID come from the system's PKCS#11 header
 * (p11-kit's: pkg-config --cflags p11-kit-1), unless a PKCS#11 header was
 * included before this one.
 */
#ifndef LIBHAEXT_CRYPTOKI_HA_H
#define LIBHAEXT_CRYPTOKI_HA_H

#ifndef CKR_OK
#include <p11-kit/pkcs11.h>
#endif

#ifndef CK_ENTRY
#define CK_ENTRY
#endif

#ifdef __cplusplus
extern "C" {
#endif

#ifndef CK_HA_MAX_MEMBERS
#define CK_HA_MAX_MEMBERS 32

/* Luna's cryptoki_v2.h types CK_USHORT as unsigned long. The library zeroes
 * the whole CK_HA_STATUS (528 bytes on x86-64 with either width) before it
 * fills it, so listSize reads right through either typedef. */
typedef unsigned short CK_USHORT;

typedef struct CK_HA_MEMBER {
    CK_ULONG memberSerial;
    CK_RV memberStatus;
} CK_HA_MEMBER;
typedef CK_HA_MEMBER *CK_HA_MEMBER_PTR;

typedef struct CK_HA_STATUS {
    CK_ULONG groupSerial;
    CK_HA_MEMBER memberList[CK_HA_MAX_MEMBERS];
    CK_USHORT listSize;
} CK_HA_STATUS;
typedef CK_HA_STATUS *CK_HA_STATE_PTR;

/*
 * Reports the state of the HA group that slotId names: either the slot of a
 * token whose serial is the group's serial (a vendor's virtual HA slot) or
 * the slot of any member token.
 *
 * Returns CKR_OK whenever a report was produced, members down or not;
 * CKR_ARGUMENTS_BAD for a NULL pState; CKR_SLOT_ID_INVALID when slotId names
 * no configured group; CKR_FUNCTION_FAILED when the module's slot list could
 * not be read before statusTimeout (try again); CKR_GENERAL_ERROR for a
 * configuration or module-loading failure (see CA_GetHAExtLastError).
 * The call returns as soon as every member has a verdict, and at the latest
 * after statusTimeout (HAConfiguration, default 3 s, at most 60 s).
 */
CK_RV CK_ENTRY CA_GetCurrentHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState);

/*
 * The legacy call, kept for applications written for it: same arguments and
 * results, answered by the same parallel, session-free check. (The original
 * opened and closed a session on every member, one after the other.)
 */
CK_RV CK_ENTRY CA_GetHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState);
#endif /* CK_HA_MAX_MEMBERS */

/* Member status codes (memberStatus), besides CKR_OK (all three stages
 * passed) and the CK_RV a member's lightweight call answered with. */
#ifndef CKR_HA_NO_INSTANCE
/* No usable driver instance: the member's token is not among the module's
 * slots, is absent, or has no monitor session. */
#define CKR_HA_NO_INSTANCE (CKR_VENDOR_DEFINED | 0x48410001UL)
#endif
#ifndef CKR_HA_SOCKET_DOWN
/* The member's connection (HAMemberEndpoints) is closed, in error or missing. */
#define CKR_HA_SOCKET_DOWN (CKR_VENDOR_DEFINED | 0x48410002UL)
#endif
#ifndef CKR_HA_TIMEOUT
/* No verdict before statusTimeout. */
#define CKR_HA_TIMEOUT (CKR_VENDOR_DEFINED | 0x48410003UL)
#endif

/*
 * libhaext's own addition: copies the reason of the last CKR_GENERAL_ERROR or
 * CKR_FUNCTION_FAILED (empty when there was none) into buf as a
 * NUL-terminated string, truncated to size bytes; returns the length of the
 * full reason. buf may be NULL when size is 0.
 */
CK_ULONG CK_ENTRY CA_GetHAExtLastError(char *buf, CK_ULONG size);

/*
 * libhaext's own addition: hands libhaext the function list the host uses
 * itself, initialized by the host. libhaext then makes its calls through the
 * host's own instance of the module, and never initializes or finalizes it.
 * Needed with modules that give every caller of C_GetFunctionList its own
 * instance (p11-kit-proxy does): an instance of libhaext's own would keep
 * its own connections to the members, and a dead one can make the host's
 * C_Finalize + C_Initialize fail. Call it before or after the first status
 * call; an instance libhaext opened itself is then finalized. Returns CKR_OK,
 * or CKR_ARGUMENTS_BAD for NULL.
 */
CK_RV CK_ENTRY CA_SetHAExtFunctionList(CK_FUNCTION_LIST_PTR pFunctionList);

#ifdef __cplusplus
}
#endif

#endif /* LIBHAEXT_CRYPTOKI_HA_H */
