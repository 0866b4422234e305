package cryptoki

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// The classes' members, by name: the front, the engine and hastatus act on
// them (internal/hostapi/ckr.h is checked against these functions).
func TestRVClasses(t *testing.T) {
	members := func(class func(uint) bool) (names []string) {
		for rv := uint(0); rv < 0x10000; rv++ {
			if class(rv) {
				names = append(names, Name(rv))
			}
		}
		for _, rv := range []uint{0x80000000, 0xC8410001, 0xC8410002, 0xC8410003, 0xFFFFFFFF, ^uint(0)} {
			if class(rv) {
				names = append(names, Name(rv))
			}
		}
		return names
	}
	assert.Equal(t, []string{"CKR_DEVICE_ERROR", "CKR_DEVICE_REMOVED", "CKR_TOKEN_NOT_PRESENT"}, members(ConnectionLost))
	assert.Equal(t, []string{"CKR_SESSION_CLOSED", "CKR_SESSION_HANDLE_INVALID"}, members(SessionDropped))
	assert.Equal(t, []string{"CKR_DEVICE_ERROR", "CKR_DEVICE_REMOVED", "CKR_SESSION_CLOSED",
		"CKR_SESSION_HANDLE_INVALID", "CKR_TOKEN_NOT_PRESENT"}, members(FailOver))
}
