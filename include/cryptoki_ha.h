/*
 * cryptoki_ha.h - libhaext: near real-time state of PKCS#11 HA groups.
 *
 * CA_GetCurrentHAState checks every member of the HA group a slot names, in
 * parallel and without opening or closing a session, and reports each
 * member's status in the CK_HA_STATUS structure of the Luna PKCS#11
 * extensions. Two layouts of that structure exist (see docs/API.md, "ABI"):
 *
 *   classic (Luna 5-era cryptoki_v2.h), the default: numeric serials,
 *     CK_ULONG groupSerial and memberSerial; 528 bytes on LP64 (x86-64,
 *     arm64), listSize at offset 520.
 *   SA6 (SafeNet Network HSM 6+ / Luna 7 cryptoki_v2.h): text serials,
 *     CK_CHAR[CK_TOKEN_SERIAL_NUMBER_SIZE + 4] (20 bytes), NUL-padded;
 *     1056 bytes, listSize (CK_ULONG) at offset 1048.
 *
 * An application built for the SA6 layout defines LIBHAEXT_HA_LAYOUT_SA6
 * before including this header (e.g. cc -DLIBHAEXT_HA_LAYOUT_SA6). Its calls
 * of CA_GetCurrentHAState and CA_GetHAState then go to the library's
 * CA_GetCurrentHAState_SA6 and CA_GetHAState_SA6, which write that layout.
 * Without the macro they go to the classic entry points, which never write
 * more than the 528 bytes of the classic layout.
 *
 * Include order: the vendor's headers first, then this one. A vendor header
 * that defines the HA types (Luna's cryptoki_v2.h: CK_HA_MAX_MEMBERS,
 * CK_HA_MEMBER, CK_HA_STATUS, CK_USHORT) makes this header keep the vendor's
 * types and add only what is missing: the prototypes, libhaext's status codes
 * and CA_GetHAExtLastError. The other way round cannot work, because the
 * vendor's header defines those types unconditionally. A compile-time check
 * below stops a build whose CK_HA_STATUS does not have the layout the
 * application chose (e.g. a Luna 7 header without LIBHAEXT_HA_LAYOUT_SA6).
 *
 * CK_ULONG, CK_RV, CK_CHAR and CK_SLOT_ID come from the system's PKCS#11
 * header (p11-kit's: pkg-config --cflags p11-kit-1), unless a PKCS#11 header
 * was included before this one. The header compiles as C99, C11 and C++
 * (98 and later), warning-free under -Wall -Wextra.
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
/* No vendor header defined the HA types: define them here, in the layout the
 * application chose. */
#define CK_HA_MAX_MEMBERS 32

/* As Luna's headers define it (earlier versions of this header: unsigned
 * short; the library zeroes the whole struct, so either reads right). */
typedef unsigned long CK_USHORT;

#ifdef LIBHAEXT_HA_LAYOUT_SA6
#ifndef CK_TOKEN_SERIAL_NUMBER_SIZE
#define CK_TOKEN_SERIAL_NUMBER_SIZE 16
#endif
typedef struct CK_HA_MEMBER {
    CK_CHAR memberSerial[CK_TOKEN_SERIAL_NUMBER_SIZE + 4]; /* text, NUL-padded */
    CK_RV memberStatus;
} CK_HA_MEMBER;

typedef struct CK_HA_STATUS {
    CK_CHAR groupSerial[CK_TOKEN_SERIAL_NUMBER_SIZE + 4]; /* text, NUL-padded */
    CK_HA_MEMBER memberList[CK_HA_MAX_MEMBERS];
    CK_ULONG listSize;
} CK_HA_STATUS;
#else
typedef struct CK_HA_MEMBER {
    CK_ULONG memberSerial;
    CK_RV memberStatus;
} CK_HA_MEMBER;

typedef struct CK_HA_STATUS {
    CK_ULONG groupSerial;
    CK_HA_MEMBER memberList[CK_HA_MAX_MEMBERS];
    CK_USHORT listSize;
} CK_HA_STATUS;
#endif /* LIBHAEXT_HA_LAYOUT_SA6 */

typedef CK_HA_MEMBER *CK_HA_MEMBER_PTR;
typedef CK_HA_STATUS *CK_HA_STATE_PTR;
#endif /* CK_HA_MAX_MEMBERS */

/* The CK_HA_STATUS in scope, whoever defined it, must have the layout the
 * application chose: text serials of 20 bytes with LIBHAEXT_HA_LAYOUT_SA6,
 * numeric CK_ULONG serials without. A failure here names the fix. */
#ifdef LIBHAEXT_HA_LAYOUT_SA6
#define LIBHAEXT_LAYOUT_OK_ \
    (sizeof(((CK_HA_STATUS *)0)->groupSerial) == 20 && sizeof(((CK_HA_MEMBER *)0)->memberSerial) == 20)
typedef char LIBHAEXT_HA_LAYOUT_SA6_is_defined_but_CK_HA_STATUS_has_numeric_serials[LIBHAEXT_LAYOUT_OK_ ? 1 : -1];
#else
#define LIBHAEXT_LAYOUT_OK_ \
    (sizeof(((CK_HA_STATUS *)0)->groupSerial) == sizeof(CK_ULONG) && \
     sizeof(((CK_HA_MEMBER *)0)->memberSerial) == sizeof(CK_ULONG))
typedef char CK_HA_STATUS_has_text_serials_define_LIBHAEXT_HA_LAYOUT_SA6[LIBHAEXT_LAYOUT_OK_ ? 1 : -1];
#endif
#undef LIBHAEXT_LAYOUT_OK_

#ifdef LIBHAEXT_HA_LAYOUT_SA6
/* The application's CK_HA_STATUS has the SA6 layout: its calls go to the
 * entry points that write that layout. */
#define CA_GetCurrentHAState CA_GetCurrentHAState_SA6
#define CA_GetHAState CA_GetHAState_SA6
#endif

/*
 * Declared whatever a vendor header declared before (a redeclaration with the
 * same types is allowed in C and C++).
 *
 * Reports the state of the HA group that slotId names: either the slot of a
 * token whose serial is the group's serial (a vendor's virtual HA slot) or
 * the slot of any member token. The whole CK_HA_STATUS is written: unused
 * members and padding are zeroed.
 *
 * Returns CKR_OK whenever a report was produced, members down or not;
 * CKR_ARGUMENTS_BAD for a NULL pState; CKR_SLOT_ID_INVALID when slotId names
 * no configured group; CKR_FUNCTION_FAILED when the module's slot list could
 * not be read before statusTimeout (try again), or when called in a child
 * process that fork() created after the library was loaded;
 * CKR_GENERAL_ERROR for a configuration or module-loading failure. Every
 * return other than CKR_OK leaves its reason for CA_GetHAExtLastError.
 * The call returns as soon as every member has a verdict, and at the latest
 * after statusTimeout (HAConfiguration, default 3 s, at most 60 s).
 * It returns with the calling thread's signal mask as it was.
 */
CK_RV CK_ENTRY CA_GetCurrentHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState);

/*
 * The legacy call, kept for applications written for it: same arguments and
 * results, answered by the same parallel, session-free check. (The original
 * opened and closed a session on every member, one after the other.)
 */
CK_RV CK_ENTRY CA_GetHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState);

/* Member status codes (memberStatus), besides CKR_OK (all three stages
 * passed) and the CK_RV a member's lightweight call answered with.
 * They collide with no other vendor's HA codes: SafeNet ProtectToolkit's
 * CKR_HA_* codes are 0x80003000-0x80003007, and Luna's cryptoki_v2.h
 * defines no CKR_HA_* code at all. */
#ifndef CKR_HA_NO_INSTANCE
/* 0xC8410001: no usable driver instance: the member's token is not among
 * the module's slots, is absent, or has no monitor session. */
#define CKR_HA_NO_INSTANCE (CKR_VENDOR_DEFINED | 0x48410001UL)
#endif
#ifndef CKR_HA_SOCKET_DOWN
/* 0xC8410002: the member's connection (HAMemberEndpoints) is closed, in
 * error or missing. */
#define CKR_HA_SOCKET_DOWN (CKR_VENDOR_DEFINED | 0x48410002UL)
#endif
#ifndef CKR_HA_TIMEOUT
/* 0xC8410003: no verdict before statusTimeout. */
#define CKR_HA_TIMEOUT (CKR_VENDOR_DEFINED | 0x48410003UL)
#endif

/*
 * libhaext's own addition, per thread like errno and dlerror: the reason of
 * this thread's last CA_GetCurrentHAState or CA_GetHAState call (either
 * layout) when it returned anything but CKR_OK; empty when that call
 * returned CKR_OK, and before the thread's first call. Reading does not
 * clear it, so a caller may ask for the length first. Copies the reason
 * into buf as a NUL-terminated string, truncated to size bytes, and returns
 * the length of the full reason (not counting the NUL). buf may be NULL when
 * size is 0. Works in a fork child too.
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

/*
 * The front module's own (libhaext-pkcs11.so; not in libhaext.so): what the
 * HA slot slotId has done, as text, one fact per line:
 *   slot ID label L serial S sessions N failovers N drift N
 *   member SERIAL up|down [standby] ops N lost N inflight N   (per member)
 *   drift TEXT                  (an object missing or ambiguous on a member)
 * Copies it into buf as a NUL-terminated string, truncated to size bytes,
 * and returns its full length; 0 when slotId is not an HA slot.
 */
CK_ULONG CK_ENTRY CA_HAExtGetHASlotReport(CK_SLOT_ID slotId, char *buf, CK_ULONG size);

/*
 * libhaext's own addition: state-change callbacks (docs/API.md,
 * "State-change callbacks").
 *
 * CK_HA_STATE_CALLBACK is called once for every change of one member's
 * status between two reports on a group: slotId is the slot the callback
 * was registered with, memberSerial the member's serial as text (as its
 * token reports it, or as Chrystoki.conf writes it while the member was
 * never found; NUL-terminated, valid only during the call), oldStatus
 * and newStatus its memberStatus in the earlier and the later report
 * (CKR_OK, a CKR_HA_* code or the vendor's CK_RV), ctx the registration's.
 *
 * It is called on a thread of libhaext's own, never on a thread of the
 * host's, with every signal blocked, and never while libhaext holds a lock
 * of its own: it may call CA_GetCurrentHAState and
 * CA_HAExtSetStateCallback. One thread makes every call, one after the
 * other, in the order the changes were found, so the changes of one member
 * arrive in order and each one starts where the one before ended (oldStatus
 * is the last call's newStatus; never oldStatus == newStatus). A slow
 * callback delays only the calls after it: status calls and the checks go
 * on, and their changes wait for it (if more than 1024 wait, a member's
 * newer changes merge into its last waiting one, which keeps the chain).
 */
typedef void (CK_ENTRY *CK_HA_STATE_CALLBACK)(CK_SLOT_ID slotId, const char *memberSerial, CK_RV oldStatus,
                                              CK_RV newStatus, void *ctx);

/* The bounds of intervalMs other than 0. */
#define LIBHAEXT_CALLBACK_INTERVAL_MIN_MS 100UL
#define LIBHAEXT_CALLBACK_INTERVAL_MAX_MS 3600000UL

/*
 * Registers fn for the HA group that slotId names (any slot a status call
 * accepts), replacing that group's earlier fn, ctx and interval; fn == NULL
 * unregisters the group's callback (intervalMs and ctx are then ignored).
 *
 * Changes are found by comparing, per member serial, every report on the
 * group with the one before: the host's status calls (any thread, either
 * layout), and, when intervalMs is not 0, checks libhaext makes on its own
 * every intervalMs milliseconds (the first at once; never two of a group
 * at a time), through the same path as a status call, so they add no call
 * to a member that already has one in flight. intervalMs 0: only the host's
 * status calls are compared. The first report after a group's registration
 * only sets the statuses later reports are compared with: it calls nothing
 * (ask CA_GetCurrentHAState for the state at that moment). Re-registering
 * keeps them.
 *
 * Returns CKR_OK; CKR_ARGUMENTS_BAD for an intervalMs other than 0 outside
 * LIBHAEXT_CALLBACK_INTERVAL_MIN_MS..LIBHAEXT_CALLBACK_INTERVAL_MAX_MS;
 * CKR_SLOT_ID_INVALID when slotId names no configured group (unregistering
 * with the slot a callback was registered with always works);
 * CKR_FUNCTION_FAILED and CKR_GENERAL_ERROR as CA_GetCurrentHAState (the
 * slot list not read before statusTimeout, a configuration or module
 * failure, or a call in a child that fork() created after the library was
 * loaded: no callback is ever called in such a child, whatever the parent
 * registered); CKR_HOST_MEMORY when the callback thread cannot be created.
 * The reason is left for CA_GetHAExtLastError.
 *
 * When it returns, the replaced or unregistered fn is not running and will
 * not be called again (unless it is called from that fn itself), so ctx
 * may be freed. No thread and no timer of the callbacks' exists while no
 * callback is registered. Callbacks stay registered across the host's
 * C_Finalize and C_Initialize; where libhaext uses the host's instance (in
 * front of the module, or after CA_SetHAExtFunctionList) a report after
 * C_Finalize gives every member CKR_HA_NO_INSTANCE, and those are changes
 * too. libhaext.so is never unloaded: unregister before the code of fn is
 * (dlclose of the host's plugin), or before exit when fn uses what exit
 * tears down.
 */
CK_RV CK_ENTRY CA_HAExtSetStateCallback(CK_SLOT_ID slotId, CK_HA_STATE_CALLBACK fn, CK_ULONG intervalMs, void *ctx);

#ifdef __cplusplus
}
#endif

#endif /* LIBHAEXT_CRYPTOKI_HA_H */
