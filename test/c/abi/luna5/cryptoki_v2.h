/*
 * A stand-in for a Luna 5-era cryptoki_v2.h, written for libhaext's tests
 * from the published facts of its HA definitions (issue 11); no part of
 * Thales's file is copied. p11-kit's pkcs11.h stands in for Luna's
 * cryptoki.h.
 *
 *   CK_USHORT is unsigned long; CK_HA_MAX_MEMBERS is 32;
 *   CK_HA_MEMBER { CK_ULONG memberSerial; CK_RV memberStatus; }
 *   CK_HA_STATUS { CK_ULONG groupSerial; CK_HA_MEMBER memberList[32]; listSize; }
 *     with listSize typed CK_USHORT, or CK_ULONG (TEST_LUNA_LISTSIZE_ULONG).
 *
 * With TEST_LUNA_PROTOTYPES it also declares the two status calls, as a
 * header that declares them would; without, it declares neither.
 */
#ifndef TEST_LUNA5_CRYPTOKI_V2_H
#define TEST_LUNA5_CRYPTOKI_V2_H

#include <p11-kit/pkcs11.h>

#ifndef CK_ENTRY
#define CK_ENTRY
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef unsigned long CK_USHORT;

#define CK_HA_MAX_MEMBERS 32

typedef struct CK_HA_MEMBER {
    CK_ULONG memberSerial;
    CK_RV memberStatus;
} CK_HA_MEMBER;
typedef CK_HA_MEMBER *CK_HA_MEMBER_PTR;

typedef struct CK_HA_STATUS {
    CK_ULONG groupSerial;
    CK_HA_MEMBER memberList[CK_HA_MAX_MEMBERS];
#ifdef TEST_LUNA_LISTSIZE_ULONG
    CK_ULONG listSize;
#else
    CK_USHORT listSize;
#endif
} CK_HA_STATUS;
typedef CK_HA_STATUS *CK_HA_STATE_PTR;

#ifdef TEST_LUNA_PROTOTYPES
CK_RV CK_ENTRY CA_GetHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState);
CK_RV CK_ENTRY CA_GetCurrentHAState(CK_SLOT_ID slotId, CK_HA_STATE_PTR pState);
#endif

#ifdef __cplusplus
}
#endif

#endif
