package probe

/*
#cgo CFLAGS: -I${SRCDIR}/../../include -I${SRCDIR}/../../internal/hostapi -Wall -Werror
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -lpthread
#include <stdlib.h>
#include "lanes.h"
#include "cryptoki_ha.h"
*/
import "C"

import (
	"time"
	"unsafe"

	"github.com/libhaext/libhaext/pkg/conf"
)

// The Go constants must equal the public header's; a mismatch fails the
// build (a negative array length).
var (
	_ [C.CK_HA_MAX_MEMBERS - conf.MaxMembers]struct{}
	_ [conf.MaxMembers - C.CK_HA_MAX_MEMBERS]struct{}
	_ [C.HX_MAX_LANES_PER_CALL - conf.MaxMembers]struct{}
	_ [C.CKR_HA_NO_INSTANCE - uint64(StatusNoInstance)]struct{}
	_ [uint64(StatusNoInstance) - C.CKR_HA_NO_INSTANCE]struct{}
	_ [C.CKR_HA_SOCKET_DOWN - uint64(StatusSocketDown)]struct{}
	_ [uint64(StatusSocketDown) - C.CKR_HA_SOCKET_DOWN]struct{}
	_ [C.CKR_HA_TIMEOUT - uint64(StatusTimeout)]struct{}
	_ [uint64(StatusTimeout) - C.CKR_HA_TIMEOUT]struct{}
)

// mode is how stage 3 is made (lanes.h's enum hx_mode).
type mode int

const (
	modeSession mode = C.HX_MODE_SESSION // C_GetSessionInfo, own session
	modeBorrow  mode = C.HX_MODE_BORROW  // C_GetSessionInfo, a session the host lends (else C_GetTokenInfo)
	modeToken   mode = C.HX_MODE_TOKEN   // C_GetTokenInfo, no session
)

// Lane results besides a CK_RV.
const (
	rvLate  = Status(^uint(0))     // HX_RV_TIMEOUT: no result before the deadline
	rvStuck = Status(^uint(0) - 1) // HX_RV_STUCK: running for longer than the stuck limit
	rvGate  = Status(^uint(0) - 2) // HX_RV_GATE: the host is finalizing the module
)

// request is one member's round in a check.
type request struct {
	lane    int
	mode    mode
	slot    uint
	session uint
	epoch   uint64 // of the instance view the request was made from
	ep      int    // the member's endpoint in stage 2's table (lanes.fds), or -1
}

// result is a lane's answer to a request.
type result struct {
	rv      Status
	took    time.Duration // from the start of the lanes' wait
	session uint          // the session of the round that answered
}

// lanes is the C pool of member threads (lanes.c).
type lanes struct{ p *C.struct_hx_lanes }

// newLanes starts n lanes over host, with stage 2's table for nfd
// endpoints.
func newLanes(host unsafe.Pointer, n, nfd int, stuck time.Duration) (lanes, bool) {
	p := C.hx_lanes_new((*C.struct_haext_vendor)(host), C.int(n), C.int(nfd), C.int64_t(stuck))
	return lanes{p}, p != nil
}

// fds is stage 2's table (lanes.h, hx_lanes_fds): C memory, accessed
// atomically, that lives as long as the pool.
func (l lanes) fds() []int32 {
	var n C.int
	p := C.hx_lanes_fds(l.p, &n)
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*int32)(unsafe.Pointer(p)), int(n))
}

// disarm keeps lane's member from being started ahead until a request
// made at epoch or later answers.
func (l lanes) disarm(lane int, epoch uint64) { C.hx_lanes_disarm(l.p, C.int(lane), C.uint64_t(epoch)) }

// lead makes this pool the one a status call's C entry point starts ahead
// (hx_head_start); unlead undoes it if it still is.
func (l lanes) lead()   { C.hx_head_set(l.p) }
func (l lanes) unlead() { C.hx_head_unset(l.p) }

// stop stops the lanes; one inside a vendor call exits when it returns.
func (l lanes) stop() { C.hx_lanes_stop(l.p) }

// waitIdle waits at most d for every lane to be out of its vendor call and
// reports whether they all are.
func (l lanes) waitIdle(d time.Duration) bool { return C.hx_lanes_wait_idle(l.p, C.int64_t(d)) == 0 }

// release drops the engine's hold on the pool; l must not be used again.
func (l lanes) release() { C.hx_lanes_release(l.p) }

// stuck returns how many lanes are inside a call older than the stuck
// limit.
func (l lanes) stuck() int { return int(C.hx_lanes_stuck(l.p)) }

// headStart and headEnd are what capi.c does in C around a status call
// about slot, for the tests of the head start (the head start in C memory,
// as in the entry point's stack frame).
func headStart(slot uint) HeadStart {
	h := (*C.struct_hx_head)(C.calloc(1, C.sizeof_struct_hx_head))
	C.hx_head_start(h, C.CK_SLOT_ID(slot))
	return HeadStart{h}
}

func headEnd(head HeadStart) {
	C.hx_head_end(head.h)
	C.free(unsafe.Pointer(head.h))
}
