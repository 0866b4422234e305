package cryptoki

import (
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// The CK_RV vocabulary: the CKR_ names and constants are miekg/pkcs11's;
// the classes below say what an answer means for the member that gave it.
// Their C twin is internal/hostapi/ckr.h, which the front module
// (internal/front) classifies the host's answers with; internal/front's
// tests check the two against each other for every CK_RV miekg/pkcs11
// names, so a change to one must be made to both.

// Name returns the CKR_ name of a CK_RV (from miekg/pkcs11's table of the
// standard's codes), or its hexadecimal value.
func Name(rv uint) string {
	s := pkcs11.Error(rv).Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && strings.HasPrefix(s[i+2:], "CKR_") {
		return s[i+2:]
	}
	return fmt.Sprintf("CKR_0x%08X", rv)
}

// ConnectionLost reports whether rv says the member behind the slot may be
// gone: CKR_DEVICE_ERROR (what p11-kit's RPC client answers for every call
// on a member whose connection died, test/lab/README.md),
// CKR_DEVICE_REMOVED or CKR_TOKEN_NOT_PRESENT.
func ConnectionLost(rv uint) bool {
	switch rv {
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT:
		return true
	}
	return false
}

// SessionDropped reports whether rv says the module no longer has the
// session the call was made on: CKR_SESSION_HANDLE_INVALID or
// CKR_SESSION_CLOSED.
func SessionDropped(rv uint) bool {
	return rv == pkcs11.CKR_SESSION_HANDLE_INVALID || rv == pkcs11.CKR_SESSION_CLOSED
}

// FailOver reports whether rv, answered on a session of one's own, says
// the member is lost to its client, which should move to another member:
// ConnectionLost or SessionDropped.
func FailOver(rv uint) bool { return ConnectionLost(rv) || SessionDropped(rv) }
