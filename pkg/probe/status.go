package probe

import (
	"errors"
	"fmt"
)

// Member status codes. They are CK_RV values: CKR_OK when all three stages
// passed, one of the CKR_HA_* codes below when stage 1, 2 or the deadline
// failed the member, or the vendor's own CK_RV when the lightweight call
// answered with an error. The values are fixed by include/cryptoki_ha.h.
const (
	// StatusOK is CKR_OK: the member passed all three stages.
	StatusOK uint = 0
	// StatusNoInstance is CKR_HA_NO_INSTANCE: no usable driver instance
	// (not among the module's slots, token absent, or no monitor session).
	StatusNoInstance uint = ckrVendorDefined | 0x48410001
	// StatusSocketDown is CKR_HA_SOCKET_DOWN: the member's connection is
	// closed, in error, or missing.
	StatusSocketDown uint = ckrVendorDefined | 0x48410002
	// StatusTimeout is CKR_HA_TIMEOUT: no verdict before the deadline.
	StatusTimeout uint = ckrVendorDefined | 0x48410003
)

// CK_RV values the engine itself interprets.
const (
	ckrVendorDefined          uint = 0x80000000
	ckrGeneralError           uint = 0x00000005
	ckrSlotIDInvalid          uint = 0x00000003
	ckrDeviceError            uint = 0x00000030
	ckrDeviceRemoved          uint = 0x00000032
	ckrSessionClosed          uint = 0x000000B0
	ckrSessionHandleInvalid   uint = 0x000000B3
	ckrTokenNotPresent        uint = 0x000000E0
	ckrCryptokiNotInitialized uint = 0x00000190
	ckrAlreadyInitialized     uint = 0x00000191
)

// rvNames names the CK_RV values a member status is likely to carry.
var rvNames = map[uint]string{
	StatusOK:                  "CKR_OK",
	StatusNoInstance:          "CKR_HA_NO_INSTANCE",
	StatusSocketDown:          "CKR_HA_SOCKET_DOWN",
	StatusTimeout:             "CKR_HA_TIMEOUT",
	0x00000001:                "CKR_CANCEL",
	0x00000002:                "CKR_HOST_MEMORY",
	ckrSlotIDInvalid:          "CKR_SLOT_ID_INVALID",
	ckrGeneralError:           "CKR_GENERAL_ERROR",
	0x00000006:                "CKR_FUNCTION_FAILED",
	0x00000007:                "CKR_ARGUMENTS_BAD",
	ckrDeviceError:            "CKR_DEVICE_ERROR",
	0x00000031:                "CKR_DEVICE_MEMORY",
	ckrDeviceRemoved:          "CKR_DEVICE_REMOVED",
	0x00000054:                "CKR_FUNCTION_NOT_SUPPORTED",
	ckrSessionClosed:          "CKR_SESSION_CLOSED",
	0x000000B1:                "CKR_SESSION_COUNT",
	ckrSessionHandleInvalid:   "CKR_SESSION_HANDLE_INVALID",
	ckrTokenNotPresent:        "CKR_TOKEN_NOT_PRESENT",
	0x000000E1:                "CKR_TOKEN_NOT_RECOGNIZED",
	ckrCryptokiNotInitialized: "CKR_CRYPTOKI_NOT_INITIALIZED",
	ckrAlreadyInitialized:     "CKR_CRYPTOKI_ALREADY_INITIALIZED",
}

// StatusName returns the CKR_ name of a CK_RV, or its hexadecimal value when
// the name is not known.
func StatusName(rv uint) string {
	if n, ok := rvNames[rv]; ok {
		return n
	}
	return fmt.Sprintf("CKR_0x%08X", rv)
}

// Error is a CK_RV returned by a Module call, as a Go error.
type Error uint

// Error implements error.
func (e Error) Error() string { return StatusName(uint(e)) }

// RV returns the CK_RV an error carries: 0 for nil, the code of an Error,
// and CKR_GENERAL_ERROR for any other error.
func RV(err error) uint {
	if err == nil {
		return StatusOK
	}
	var e Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return ckrGeneralError
}

// dropsSession reports whether a lightweight call's CK_RV means the monitor
// session can no longer be used and must be re-opened by the recovery loop.
func dropsSession(rv uint) bool {
	switch rv {
	case ckrSessionHandleInvalid, ckrSessionClosed, ckrDeviceRemoved,
		ckrTokenNotPresent, ckrCryptokiNotInitialized:
		return true
	}
	return false
}
