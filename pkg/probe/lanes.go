package probe

/*
#cgo CFLAGS: -I${SRCDIR}/../../include -I${SRCDIR}/../../internal/hostapi -Wall -Werror
#cgo pkg-config: p11-kit-1
#cgo LDFLAGS: -lpthread
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
	fd      int    // the connection stage 2 found healthy, or -1
}

// result is a lane's answer to a request.
type result struct {
	rv      Status
	took    time.Duration // from the start of the lanes' wait
	session uint          // the session of the round that answered
}

// slotKey names the status call a check serves, for the head start: the
// slot the host asked about. A check without one (hastatus, a member
// still in its first resolution) neither takes nor leaves a head start.
type slotKey struct {
	slot uint
	ok   bool
}

// lanes is the C pool of member threads (lanes.c).
type lanes struct{ p *C.struct_hx_lanes }

func newLanes(host unsafe.Pointer, n int, stuck time.Duration) (lanes, bool) {
	p := C.hx_lanes_new((*C.struct_haext_vendor)(host), C.int(n), C.int64_t(stuck))
	return lanes{p}, p != nil
}

// check runs one round for every request and waits at most wait. With a
// key it takes the rounds the status call's head start began, and arms
// the members that answered for the next one.
func (l lanes) check(reqs []request, wait time.Duration, key slotKey, out []result) {
	var creq [conf.MaxMembers]C.struct_hx_req
	var cres [conf.MaxMembers]C.struct_hx_res
	for i, r := range reqs {
		creq[i] = C.struct_hx_req{lane: C.int(r.lane), mode: C.int(r.mode),
			slot: C.CK_SLOT_ID(r.slot), session: C.CK_SESSION_HANDLE(r.session),
			epoch: C.uint64_t(r.epoch), fd: C.int(r.fd)}
	}
	switch {
	case len(reqs) == 0:
	case key.ok:
		C.hx_lanes_check_slot(l.p, &creq[0], C.int(len(reqs)), C.int64_t(max(wait, 0)), &cres[0], C.CK_SLOT_ID(key.slot))
	default:
		C.hx_lanes_check(l.p, &creq[0], C.int(len(reqs)), C.int64_t(max(wait, 0)), &cres[0])
	}
	for i := range reqs {
		out[i] = result{rv: Status(cres[i].rv), took: time.Duration(cres[i].took_ns), session: uint(cres[i].session)}
	}
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
// about slot; the tests of the head start call them from Go, on a locked
// thread, as a host's thread is.
func headStart(slot uint) { C.hx_head_start(C.CK_SLOT_ID(slot)) }
func headEnd()            { C.hx_head_end() }
