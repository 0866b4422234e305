package probe

import (
	"github.com/miekg/pkcs11"

	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// Status is a member's status in a report: a CK_RV. It is CKR_OK when all
// three stages passed, one of the CKR_HA_* codes when stage 1, 2 or the
// deadline failed the member, or the vendor's own CK_RV when the
// lightweight call answered with an error. The CKR_HA_* values are fixed by
// include/cryptoki_ha.h, and the build checks that they agree (lanes.go).
type Status uint

// Member statuses of libhaext's own.
const (
	// StatusOK is CKR_OK: the member passed all three stages.
	StatusOK Status = 0
	// StatusNoInstance is CKR_HA_NO_INSTANCE: no usable driver instance
	// (not among the module's slots, token absent, no monitor session, or
	// the host finalized the module).
	StatusNoInstance Status = 0xC8410001
	// StatusSocketDown is CKR_HA_SOCKET_DOWN: the member's connection is
	// closed, in error, or missing.
	StatusSocketDown Status = 0xC8410002
	// StatusTimeout is CKR_HA_TIMEOUT: no verdict before the deadline.
	StatusTimeout Status = 0xC8410003
)

// CK_RV values the engine itself interprets.
const (
	ckrSlotIDInvalid          = pkcs11.CKR_SLOT_ID_INVALID
	ckrDeviceError            = pkcs11.CKR_DEVICE_ERROR
	ckrDeviceRemoved          = pkcs11.CKR_DEVICE_REMOVED
	ckrSessionClosed          = pkcs11.CKR_SESSION_CLOSED
	ckrSessionHandleInvalid   = pkcs11.CKR_SESSION_HANDLE_INVALID
	ckrTokenNotPresent        = pkcs11.CKR_TOKEN_NOT_PRESENT
	ckrTokenNotRecognized     = pkcs11.CKR_TOKEN_NOT_RECOGNIZED
	ckrCryptokiNotInitialized = pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED
)

var haNames = map[Status]string{
	StatusNoInstance: "CKR_HA_NO_INSTANCE",
	StatusSocketDown: "CKR_HA_SOCKET_DOWN",
	StatusTimeout:    "CKR_HA_TIMEOUT",
}

// String returns the CKR_ name of the status, or its hexadecimal value.
func (s Status) String() string {
	if n, ok := haNames[s]; ok {
		return n
	}
	return cryptoki.Name(uint(s))
}

// Alive reports whether the member passed all three stages.
func (s Status) Alive() bool { return s == StatusOK }

// Reason explains the status in a few words: "alive", "no instance",
// "socket down", "timeout", or the CK_RV's name.
func (s Status) Reason() string {
	switch s {
	case StatusOK:
		return "alive"
	case StatusNoInstance:
		return "no instance"
	case StatusSocketDown:
		return "socket down"
	case StatusTimeout:
		return "timeout"
	}
	return s.String()
}

// dropsSession reports whether a lightweight call's CK_RV means the
// session it used can no longer be used and must be re-opened: the module
// dropped it (cryptoki.SessionDropped), the token left its slot, which
// closes every session on it (CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT),
// or the module was finalized. CKR_DEVICE_ERROR, the other answer of
// cryptoki.ConnectionLost, says nothing of the session and keeps it.
func dropsSession(rv Status) bool {
	switch rv {
	case ckrDeviceRemoved, ckrTokenNotPresent, ckrCryptokiNotInitialized:
		return true
	}
	return cryptoki.SessionDropped(uint(rv))
}
