package hostapi_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/libhaext/libhaext/internal/hostapi"
	"github.com/libhaext/libhaext/pkg/cryptoki"
)

// The C twin of the CK_RV classes (internal/hostapi/ckr.h) answers as
// their Go definition (pkg/cryptoki/rv.go) for every CK_RV miekg/pkcs11
// names (its table lies in 0..0x200 and at CKR_VENDOR_DEFINED), every
// other value below 0x10000 and above CKR_VENDOR_DEFINED, libhaext's own
// CKR_HA_* and (CK_RV)-1.
func TestCKRTwinMatchesGo(t *testing.T) {
	var rvs []uint
	for rv := uint(0); rv < 0x10000; rv++ {
		rvs = append(rvs, rv, 0x80000000+rv)
	}
	rvs = append(rvs, 0xC8410001, 0xC8410002, 0xC8410003, 0xFFFFFFFF, ^uint(0))
	named, conn, dropped := 0, 0, 0
	for _, rv := range rvs {
		name := cryptoki.Name(rv)
		if name[:6] != "CKR_0x" {
			named++
		}
		if !assert.Equal(t, cryptoki.ConnectionLost(rv), hostapi.RVConnection(rv), "haext_rv_connection(%s)", name) ||
			!assert.Equal(t, cryptoki.SessionDropped(rv), hostapi.RVDropped(rv), "haext_rv_dropped(%s)", name) ||
			!assert.Equal(t, cryptoki.FailOver(rv), hostapi.RVFailover(rv), "haext_rv_failover(%s)", name) {
			return
		}
		if hostapi.RVConnection(rv) {
			conn++
		}
		if hostapi.RVDropped(rv) {
			dropped++
		}
	}
	require.GreaterOrEqual(t, named, 88, "the 88 codes of miekg/pkcs11 v1.1.2's table, all swept")
	assert.Equal(t, 3, conn)
	assert.Equal(t, 2, dropped)
}
