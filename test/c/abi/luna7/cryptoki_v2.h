/*
 * A stand-in for the SafeNet Network HSM 6+ / Luna 7 cryptoki_v2.h ("SA6"
 * layout), written for libhaext's tests from the published facts of its HA
 * definitions (issue 11); no part of Thales's file is copied. p11-kit's
 * pkcs11.h stands in for Luna's cryptoki.h.
 *
 *   CK_HA_MEMBER { CK_CHAR memberSerial[CK_TOKEN_SERIAL_NUMBER_SIZE + 4]; CK_RV memberStatus; }
 *   CK_HA_STATUS { CK_CHAR groupSerial[CK_TOKEN_SERIAL_NUMBER_SIZE + 4];
 *                  CK_HA_MEMBER memberList[CK_HA_MAX_MEMBERS]; CK_ULONG listSize; }
 *   1056 bytes on LP64, listSize at offset 1048.
 *
 * With TEST_LUNA_PROTOTYPES it also declares the two status calls.
 */
#ifndef TEST_LUNA7_CRYPTOKI_V2_H
#define TEST_LUNA7_CRYPTOKI_V2_H

#include <p11-kit/pkcs11.h>

#ifndef CK_ENTRY
#define CK_ENTRY
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef unsigned long CK_USHORT;

#define CK_TOKEN_SERIAL_NUMBER_SIZE 16
#define CK_HA_MAX_MEMBERS 32

typedef struct CK_HA_MEMBER {
    CK_CHAR memberSerial[CK_TOKEN_SERIAL_NUMBER_SIZE + 4];
    CK_RV memberStatus;
} CK_HA_MEMBER;
typedef CK_HA_MEMBER *CK_HA_MEMBER_PTR;

typedef struct CK_HA_STATUS {
    CK_CHAR groupSerial[CK_TOKEN_SERIAL_NUMBER_SIZE + 4];
    CK_HA_MEMBER memberList[CK_HA_MAX_MEMBERS];
    CK_ULONG listSize;
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
